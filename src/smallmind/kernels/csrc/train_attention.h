/* Causal self-attention for training, forward and backward, over the (sequence, head) pairs of
 * a batch: the products of one pair run as register tiles over packed (T, D) panels, skipping
 * the all-zero upper triangle, and each pair's scratch lives in a buffer of the thread that
 * runs it. Every stride is in elements; module.c validates every shape and overlap first. */
#ifndef SMALLMIND_TRAIN_ATTENTION_H
#define SMALLMIND_TRAIN_ATTENTION_H

#define SM_TATTN_MR 6   /* rows of a register tile */
#define SM_TATTN_NR 16  /* columns of a register tile (two 8-float vectors) */

typedef struct {
    const float *qkv;        /* (B*T, 3C): q at column h*D, k at C + h*D, v at 2C + h*D */
    long qkv_rs;
    float *probs;            /* (B,H,T,T): written by the forward, read by the backward */
    long ps_b, ps_h, ps_t;
    const float *mask;       /* (B,H,T,T) dropout mask, or NULL */
    long ms_b, ms_h, ms_t;
    float *out;              /* forward: (B*T, C), heads merged */
    long out_rs;
    const float *dout;       /* backward: (B*T, C) */
    long dout_rs;
    float *dqkv;             /* backward: (B*T, 3C), written */
    long dqkv_rs;
    long B, H, T, D;
    float scale;
} TrainAttnArgs;

typedef struct {
    const char *name;
    /* one (sequence, head) pair p = b*H + h; scratch holds sm_train_attention_scratch() floats */
    void (*forward_pair)(const TrainAttnArgs *a, long p, float *scratch);
    void (*backward_pair)(const TrainAttnArgs *a, long p, float *scratch);
} TrainAttnTable;

extern const TrainAttnTable sm_tatable_generic;
#if defined(__x86_64__) && defined(__GNUC__)
extern const TrainAttnTable sm_tatable_avx2;
#endif

/* floats of scratch one pair needs (backward = 1, forward = 0) */
long sm_train_attention_scratch(const TrainAttnArgs *a, int backward);
/* every pair on the native pool (call without the GIL): 0, or -1 when a thread's scratch
 * cannot be allocated */
int sm_train_attention(const TrainAttnTable *t, const TrainAttnArgs *a, int backward);

#endif
