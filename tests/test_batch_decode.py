import numpy as np

from smallmind.models.gpt import GPT, init_params, preset
from smallmind.runtime.batch_decode import BatchDecoder
from smallmind.runtime.session import Session


class PerSequenceOnly:
    """The GPT without forward_batch, as a network of a family that lacks it."""

    def __init__(self, net):
        self.config, self.kv_spec = net.config, net.kv_spec
        self.workspace, self.forward = net.workspace, net.forward


def decode(net, prompts, steps):
    # greedy tokens of every prompt, all decoded together through a BatchDecoder
    sessions = [Session(net, 32) for _ in prompts]
    tokens = [int(s.prefill(np.array(p, np.int32)).argmax()) for s, p in zip(sessions, prompts)]
    decoder, out = BatchDecoder(net, len(prompts)), [list(tokens)]
    for _ in range(steps):
        tokens = [int(row.argmax()) for row in decoder.step(sessions, tokens)]
        out.append(tokens)
    return out, sessions


def test_a_network_without_forward_batch_is_stepped_per_sequence_to_the_same_tokens():
    net = GPT(init_params(preset("tiny"), seed=8))
    prompts = [[1, 2, 3], [50], [7, 8, 9, 10, 11]]
    batched, batched_sessions = decode(net, prompts, 6)
    fallback, fallback_sessions = decode(PerSequenceOnly(net), prompts, 6)
    assert BatchDecoder(PerSequenceOnly(net), 2).batched is False
    assert batched == fallback
    for a, b in zip(batched_sessions, fallback_sessions):
        assert a.length == b.length and (a.ids[:a.length] == b.ids[:b.length]).all()
