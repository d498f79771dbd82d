"""`smallmind profile`: where the time goes in a generation (and training), as profile.md,
profile.json and charts in --out, with a summary printed; or `--compare BEFORE.json AFTER.json`."""

from pathlib import Path

from ..errors import SmallMindError
from . import THREADS_HELP, add_mmap, mmap_choice, nonneg_int, positive_int, set_thread_budget

DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog. "


def add_parser(sub):
    p = sub.add_parser("profile", help="profile generation (and training): scopes, roofline, allocations")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH",
                        help="a GGUF file or a checkpoint directory (tokenization is timed too)")
    source.add_argument("--preset", metavar="NAME", help="a random-init model of this preset (default: seed)")
    p.add_argument("--tokens", type=positive_int, default=50, help="new tokens to generate (default 50)")
    p.add_argument("--prompt-tokens", type=positive_int, default=32, help="prompt length in tokens (default 32)")
    p.add_argument("--prompt", help="prompt text for --model (default: for a checkpoint, text decoded from random "
                   "token ids; for a GGUF model, a plain English sentence repeated)")
    p.add_argument("--train", action="store_true", help="also profile training steps (the trainable GPT only)")
    p.add_argument("--train-steps", type=positive_int, default=5, help="profiled training steps (default 5)")
    p.add_argument("--batch", type=positive_int, default=4, help="training batch size (default 4)")
    p.add_argument("--repeats", type=positive_int, default=9,
                   help="timed generations, plain and profiled each, interleaved (default 9)")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random weights and prompt")
    p.add_argument("--out", metavar="PATH",
                   help="output directory (default ./profile); with --compare, a Markdown file")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                   help="compare two profile.json files instead of profiling")
    add_mmap(p)
    p.set_defaults(run=run)


def run(args):
    if args.compare:
        return _run_compare(args)
    import numpy as np

    from ..models.gpt import GPT, init_params, preset
    from ..profiler.report import render_summary, write_profile
    from ..profiler.run import run_profile

    out_dir = Path(args.out or "profile")
    if out_dir.exists() and not out_dir.is_dir():
        raise SmallMindError(f"--out {out_dir} exists and is not a directory")
    rng = np.random.default_rng(args.seed)
    tokenizer = prompt_text = architecture = path = None
    if args.model:
        model_path = Path(args.model)
        if not model_path.exists():
            raise SmallMindError(f"--model {model_path} does not exist")
        if args.train and not model_path.is_dir():
            raise SmallMindError(f"--train profiles the trainable GPT (a checkpoint directory or --preset); "
                                 f"{model_path} is a model file, inference only")
        from ..runtime.model import load

        model = load(model_path, mmap=mmap_choice(args))
        net, tokenizer, architecture, path = model.net, model.tokenizer, model.architecture, model.path
        _check_fits(args, net.config)
        prompt_text = args.prompt
        if prompt_text is None and model.kind == "checkpoint":
            prompt_text = tokenizer.decode(rng.integers(0, tokenizer.vocab_size, args.prompt_tokens))
        elif prompt_text is None:
            # random ids of a large vocabulary decode to control and byte tokens: use plain text
            prompt_text = DEFAULT_PROMPT * (args.prompt_tokens // 4 + 1)
        prompt_ids = np.asarray(tokenizer.encode(prompt_text, add_bos=tokenizer.add_bos),
                                np.int32)[:args.prompt_tokens]
        if prompt_ids.shape[0] == 0:
            raise SmallMindError("the prompt encodes to no tokens; give a longer --prompt")
        source = f"checkpoint {args.model}" if model.kind == "checkpoint" else f"{model.name}: {model_path.name}"
    else:
        if args.prompt is not None:
            raise SmallMindError("--prompt needs --model (a preset has no tokenizer: it is fed random token ids)")
        name = args.preset or "seed"
        cfg = preset(name)
        _check_fits(args, cfg)
        net = GPT(init_params(cfg, seed=args.seed))
        prompt_ids = rng.integers(0, net.config.vocab_size, args.prompt_tokens)
        source = f"preset {name}"
    context = net.config.context_length
    if args.train and args.batch * context > 1 << 16:
        raise SmallMindError(f"--batch {args.batch} x context {context} is too large a training batch "
                             "to profile; use a smaller --batch")
    set_thread_budget(args.threads, "profile")
    profile = run_profile(net, source=source, prompt_ids=prompt_ids, new_tokens=args.tokens, repeats=args.repeats,
                          tokenizer=tokenizer, prompt_text=prompt_text, architecture=architecture, path=path,
                          train=args.train, train_batch=args.batch, train_steps=args.train_steps)
    try:
        written = write_profile(profile, out_dir)
    except OSError as e:
        raise SmallMindError(f"cannot write the profile to {out_dir}: {e.strerror or e}") from None
    print(render_summary(profile))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def _check_fits(args, cfg) -> None:
    # before a random prompt of --prompt-tokens ids is drawn
    if args.prompt_tokens + args.tokens > cfg.context_length:
        raise SmallMindError(f"{args.prompt_tokens} prompt tokens + {args.tokens} new tokens exceed the context "
                             f"length {cfg.context_length} of this model")


def _run_compare(args):
    from ..profiler.compare import compare, load_profile, render_comparison

    before, after = (load_profile(p) for p in args.compare)
    text = render_comparison(compare(before, after), *args.compare)
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise SmallMindError(f"--out {out} is a directory; with --compare it names a Markdown file")
        if not out.parent.is_dir():
            raise SmallMindError(f"--out {out}: directory {out.parent} does not exist")
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out)
        except OSError as e:
            raise SmallMindError(f"cannot write {out}: {e.strerror or e}") from None
        print(f"wrote {out}")
    else:
        print(text, end="")
    return 0
