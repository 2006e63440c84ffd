#!/usr/bin/env python3
"""Independent reference values for the rlhf-algo unit tests.

Every loss of crates/rlhf-algo is re-implemented here from its paper (or the
authors' reference code) with PyTorch in float64, on the same small inputs the
Rust tests use. Run it and the tests' hard-coded numbers can be compared:

    python3 scripts/algo_reference.py            # all cases
    python3 scripts/algo_reference.py dpo_basic  # cases whose name contains the argument

Each line is `case: key=value ...`; a Rust test names the case it copies.
Nothing here imports the Rust code: the formulas are written out again on purpose.
"""

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def fmt(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().numpy()
    if isinstance(v, np.ndarray):
        return "[" + ", ".join(f"{x:.9g}" for x in v.reshape(-1)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(f"{float(x):.9g}" for x in v) + "]"
    return f"{float(v):.9g}"


def emit(name, **kv):
    print(name + ": " + " ".join(f"{k}={fmt(v)}" for k, v in kv.items()))


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# ---------------------------------------------------------------- pairwise
# Shared pair batch (4 pairs): summed log-probs, token counts, soft labels.
PC = [-12.3, -8.1, -20.5, -5.0]
PR = [-13.0, -7.4, -22.0, -9.5]
RC = [-12.0, -8.5, -21.0, -6.0]
RR = [-12.5, -7.0, -21.5, -8.0]
NC = [10.0, 7.0, 18.0, 4.0]
NR = [12.0, 6.0, 20.0, 9.0]
PREF = [0.9, 0.6, 1.0, 0.3]
# Calibration samples for VPO / SELM (one per pair).
CAL_P = [-10.0, -15.0, -7.0, -9.0]
CAL_R = [-10.5, -14.0, -7.5, -8.0]


def pair_inputs():
    return t(PC, True), t(PR, True), t(RC), t(RR)


def pair_stats(name, loss, pc, pr, rc, rr, beta, extra=None):
    rew_c = beta * (pc - rc)
    rew_r = beta * (pr - rr)
    loss.backward()
    kv = dict(
        loss=loss,
        reward_chosen=rew_c.mean(),
        reward_rejected=rew_r.mean(),
        margin=(rew_c - rew_r).mean(),
        accuracy=(rew_c > rew_r).double().mean(),
        grad_chosen=pc.grad,
        grad_rejected=pr.grad,
    )
    if extra:
        kv.update(extra)
    emit(name, **kv)


@case
def dpo_basic():
    # Rafailov et al. 2023, eq. 7: -log sigma(beta * (log-ratio_c - log-ratio_r)).
    pc, pr, rc, rr = pair_inputs()
    beta = 0.1
    h = (pc - rc) - (pr - rr)
    loss = (-F.logsigmoid(beta * h)).mean()
    pair_stats("dpo_basic", loss, pc, pr, rc, rr, beta)


@case
def ipo_basic():
    # Azar et al. 2023, eq. 17: (h - 1/(2 tau))^2.
    pc, pr, rc, rr = pair_inputs()
    tau = 0.1
    h = (pc - rc) - (pr - rr)
    loss = ((h - 1.0 / (2 * tau)) ** 2).mean()
    pair_stats("ipo_basic", loss, pc, pr, rc, rr, tau)


@case
def cdpo_basic():
    # Mitchell 2023 (cDPO note): label smoothing eps.
    pc, pr, rc, rr = pair_inputs()
    beta, eps = 0.1, 0.1
    z = beta * ((pc - rc) - (pr - rr))
    loss = (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()
    pair_stats("cdpo_basic", loss, pc, pr, rc, rr, beta)


@case
def rdpo_basic():
    # Chowdhury et al. 2024, eq. (8): unbiased loss under flip rate eps.
    pc, pr, rc, rr = pair_inputs()
    beta, eps = 0.1, 0.1
    z = beta * ((pc - rc) - (pr - rr))
    loss = (((1 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1 - 2 * eps)).mean()
    pair_stats("rdpo_basic", loss, pc, pr, rc, rr, beta)


@case
def ln_dpo_basic():
    # Saeidi et al. 2024 (Hitchhiker's guide), LN-DPO: per-token log-ratios.
    pc, pr, rc, rr = pair_inputs()
    nc, nr = t(NC), t(NR)
    beta = 1.0
    z = beta * ((pc - rc) / nc - (pr - rr) / nr)
    loss = (-F.logsigmoid(z)).mean()
    loss.backward()
    emit("ln_dpo_basic", loss=loss, grad_chosen=pc.grad, grad_rejected=pr.grad,
         reward_chosen=(beta * (pc - rc) / nc).mean(), reward_rejected=(beta * (pr - rr) / nr).mean())


@case
def simpo_basic():
    # Meng et al. 2024, eq. 6; reference code: logits = avg_c - avg_r - gamma_beta_ratio.
    pc, pr, _, _ = pair_inputs()
    nc, nr = t(NC), t(NR)
    beta, ratio = 2.0, 0.25
    z = beta * (pc / nc - pr / nr - ratio)
    loss = (-F.logsigmoid(z)).mean()
    loss.backward()
    rew_c, rew_r = beta * pc / nc, beta * pr / nr
    emit("simpo_basic", loss=loss, reward_chosen=rew_c.mean(), reward_rejected=rew_r.mean(),
         accuracy=(rew_c > rew_r).double().mean(), grad_chosen=pc.grad, grad_rejected=pr.grad)


@case
def soft_dpo_basic():
    # Binary cross-entropy of sigma(beta h) against the preference strength p.
    pc, pr, rc, rr = pair_inputs()
    beta = 0.1
    p = t(PREF)
    z = beta * ((pc - rc) - (pr - rr))
    loss = (-(p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z))).mean()
    pair_stats("soft_dpo_basic", loss, pc, pr, rc, rr, beta)


@case
def rpo_basic():
    # Pang et al. 2024 (iterative RPO): DPO + alpha * NLL(chosen) / |y_c|.
    pc, pr, rc, rr = pair_inputs()
    nc = t(NC)
    beta, alpha = 0.1, 1.0
    z = beta * ((pc - rc) - (pr - rr))
    dpo = (-F.logsigmoid(z)).mean()
    nll = (-pc / nc).mean()
    loss = dpo + alpha * nll
    pair_stats("rpo_basic", loss, pc, pr, rc, rr, beta, extra=dict(nll=nll))


def vpo(sign, alpha, beta, name):
    # Cen et al. 2024 (VPO) with the calibrated value J*(r) = -beta E_{y~pi_cal} log pi/pi_ref:
    # loss = DPO + sign * alpha * beta * mean(log pi(y_cal) - log pi_ref(y_cal)).
    pc, pr, rc, rr = pair_inputs()
    cp = t(CAL_P, True)
    cr = t(CAL_R)
    z = beta * ((pc - rc) - (pr - rr))
    dpo = (-F.logsigmoid(z)).mean()
    reg = sign * alpha * beta * (cp - cr).mean()
    loss = dpo + reg
    loss.backward()
    emit(name, loss=loss, regulariser=reg, grad_chosen=pc.grad, grad_rejected=pr.grad,
         grad_calibration=cp.grad)


@case
def vpo_online():
    vpo(+1.0, 0.1, 0.1, "vpo_online")


@case
def vpo_offline():
    vpo(-1.0, 0.1, 0.1, "vpo_offline")


@case
def selm_basic():
    # Zhang et al. 2024 (SELM), reference trainer: -logsigmoid(beta h) + alpha * beta * (log pi - log pi_ref)(y_ref).
    vpo(+1.0, 0.001, 0.1, "selm_basic")


# ---------------------------------------------------------------- listwise
L_LOGP = [[-10.0, -12.0, -9.0, -15.0], [-20.0, -18.0, -25.0, 0.0]]
L_TOK = [[5.0, 6.0, 4.0, 8.0], [10.0, 9.0, 11.0, 1.0]]
L_REF = [[-11.0, -11.5, -10.0, -14.0], [-19.0, -19.0, -24.0, 0.0]]
L_SCORE = [[0.9, 0.7, 0.4, 0.1], [2.0, 1.5, -1.0, 0.0]]
L_N = [4, 3]


@case
def pro_dynamic():
    # Song et al. 2023 (PRO), reference code compute_loss: length-normalised scores,
    # temperatures from reward gaps, SFT on the summed log-prob of the best times w*(n-1)^2.
    logp = t(L_LOGP, True)
    tok = t(L_TOK)
    w = 0.05
    total_rank = []
    sft = []
    for b in range(2):
        n = L_N[b]
        s = logp[b, :n] / tok[b, :n]
        r = t(L_SCORE[b][:n])
        lb = 0
        for k in range(n - 1):
            gaps = r[k] - r[k + 1:]
            tpos = gaps.max()
            terms = torch.cat([(s[k] * tpos).reshape(1), s[k + 1:] * gaps])
            lb = lb + torch.logsumexp(terms, 0) - s[k] * tpos
        total_rank.append(lb)
        sft.append(w * (n - 1) ** 2 * (-logp[b, 0]))
    rank = torch.stack(total_rank).mean()
    sftl = torch.stack(sft).mean()
    loss = rank + sftl
    loss.backward()
    emit("pro_dynamic", loss=loss, ranking=rank, sft=sftl, grad_logp=logp.grad)


@case
def pro_fixed():
    # PRO with a fixed temperature tau (no reward gaps): Plackett-Luce on s/tau.
    logp = t(L_LOGP, True)
    tok = t(L_TOK)
    tau, w = 0.5, 0.05
    ranks, sfts = [], []
    for b in range(2):
        n = L_N[b]
        s = logp[b, :n] / tok[b, :n] / tau
        lb = 0
        for k in range(n - 1):
            lb = lb + torch.logsumexp(s[k:], 0) - s[k]
        ranks.append(lb)
        sfts.append(w * (n - 1) ** 2 * (-logp[b, 0]))
    rank = torch.stack(ranks).mean()
    sftl = torch.stack(sfts).mean()
    loss = rank + sftl
    loss.backward()
    emit("pro_fixed", loss=loss, ranking=rank, sft=sftl, grad_logp=logp.grad)


def lipo_list(s, psi):
    # Liu et al. 2024 (LiPO-lambda), eq. for Delta_ij with DCG gains 2^psi - 1 and
    # discounts 1/log2(1 + rank), ranks from the (detached) model scores.
    n = s.shape[0]
    order = torch.argsort(-s.detach(), stable=True)
    rank = torch.empty(n)
    rank[order] = torch.arange(1, n + 1, dtype=torch.float64)
    g = 2.0 ** psi - 1
    disc = 1.0 / torch.log2(1 + rank)
    loss = 0
    for i in range(n):
        for j in range(n):
            if psi[i] > psi[j]:
                wgt = abs(g[i] - g[j]) * abs(disc[i] - disc[j])
                loss = loss - wgt * F.logsigmoid(s[i] - s[j])
    return loss


@case
def lipo_basic():
    logp = t(L_LOGP, True)
    ref = t(L_REF)
    beta = 0.1
    losses = []
    for b in range(2):
        n = L_N[b]
        s = beta * (logp[b, :n] - ref[b, :n])
        losses.append(lipo_list(s, t(L_SCORE[b][:n])))
    loss = torch.stack(losses).mean()
    loss.backward()
    emit("lipo_basic", loss=loss, grad_logp=logp.grad)


# ---------------------------------------------------------------- binary feedback
B_POL = [-10.0, -12.0, -8.0, -15.0, -9.0, -11.0]
B_REF = [-10.5, -11.0, -8.2, -14.0, -9.5, -12.0]
B_DES = [1, 0, 1, 0, 1, 0]
B_KLP = [-11.0, -13.0, -9.0, -14.0, -10.0, -12.0]
B_KLR = [-11.4, -12.5, -9.3, -14.2, -10.1, -12.6]


def kto(name, beta, lam_d, lam_u, use_kl_inputs):
    # Ethayarajh et al. 2024 (KTO) / TRL kto_loss: z0 = clamp(mean KL sample log-ratio, 0), detached;
    # desirable: lam_d (1 - sigma(beta (r - z0))), undesirable: lam_u (1 - sigma(beta (z0 - r))); mean over all.
    pol = t(B_POL, True)
    ref = t(B_REF)
    des = torch.tensor(B_DES, dtype=torch.bool)
    if use_kl_inputs:
        z0 = (t(B_KLP) - t(B_KLR)).mean().clamp(min=0)
    else:
        z0 = (pol - ref).detach().mean().clamp(min=0)
    r = pol - ref
    lossv = torch.where(des, lam_d * (1 - torch.sigmoid(beta * (r - z0))),
                        lam_u * (1 - torch.sigmoid(beta * (z0 - r))))
    loss = lossv.mean()
    loss.backward()
    emit(name, loss=loss, kl=z0, reward_desirable=(beta * r[des]).mean(),
         reward_undesirable=(beta * r[~des]).mean(), grad_policy=pol.grad)


@case
def kto_basic():
    kto("kto_basic", 0.1, 1.0, 1.0, True)


@case
def kto_self_kl():
    kto("kto_self_kl", 0.1, 1.33, 1.0, False)


def bco(name, beta, prior_count, prior_mean, udm):
    # Jung et al. 2024 (BCO) / TRL bco_loss: delta = running mean of all rewards beta*(logp - ref)
    # updated with this batch first; desirable -logsigmoid(r - delta), undesirable -logsigmoid(-(r - delta)).
    pol = t(B_POL, True)
    ref = t(B_REF)
    des = torch.tensor(B_DES, dtype=torch.bool)
    rew = beta * (pol - ref)
    batch = rew.detach().numpy()
    count = prior_count + len(batch)
    delta = (prior_mean * prior_count + batch.sum()) / count
    w = torch.ones(6)
    if udm is not None:
        w = t(udm)
    lossv = torch.where(des, -F.logsigmoid(rew - delta), w * -F.logsigmoid(-(rew - delta)))
    loss = lossv.mean()
    loss.backward()
    emit(name, loss=loss, delta=delta, grad_policy=pol.grad)


@case
def bco_basic():
    bco("bco_basic", 0.1, 0, 0.0, None)


@case
def bco_prior():
    bco("bco_prior", 0.1, 10, 0.05, [1.0, 0.5, 1.0, 2.0, 1.0, 1.5])


# ---------------------------------------------------------------- policy gradient
LOGP = [[-1.0, -0.5, -2.0, -0.1, -0.7], [-0.3, -1.2, -0.8, -5.0, -5.0], [-2.2, -0.4, -3.0, -3.0, -3.0]]
OLD = [[-1.1, -0.4, -2.5, -0.1, -0.2], [-0.3, -1.0, -0.9, -1.0, -1.0], [-2.0, -0.9, -1.0, -1.0, -1.0]]
REF = [[-1.3, -0.6, -2.1, -0.3, -0.9], [-0.2, -1.5, -0.7, -1.0, -1.0], [-2.5, -0.3, -1.0, -1.0, -1.0]]
ADV = [[0.5, 0.5, -1.0, 2.0, 1.0], [-0.3, 1.5, 0.7, 9.0, 9.0], [1.2, -2.0, 9.0, 9.0, 9.0]]
MASK = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def reduce(x, m, how, max_len=8):
    if how == "token_mean":
        return (x * m).sum() / m.sum()
    if how == "sequence_mean":
        return ((x * m).sum(1) / m.sum(1)).mean()
    if how == "sequence_sum":
        return (x * m).sum(1).mean()
    if how == "fixed_length":
        return (x * m).sum(1).mean() / max_len
    raise ValueError(how)


@case
def ppo_surrogate():
    # Schulman et al. 2017, eq. 7: -min(r A, clip(r, 1-eps, 1+eps) A), masked.
    for how in ["token_mean", "sequence_mean", "sequence_sum", "fixed_length"]:
        logp = t(LOGP, True)
        old, adv, m = t(OLD), t(ADV), t(MASK)
        ratio = torch.exp(logp - old)
        eps = 0.2
        per = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        loss = reduce(per, m, how)
        loss.backward()
        clipped = ((ratio - 1).abs() > eps).double()
        clipfrac = (clipped * m).sum() / m.sum()
        lr = logp - old
        approx_kl = (((torch.exp(lr) - 1) - lr) * m).sum() / m.sum()  # k3 of KL(old || new), samples from old
        emit("ppo_surrogate_" + how, loss=loss, clipfrac=clipfrac, approx_kl=approx_kl.detach(),
             grad_logp=logp.grad)


VAL = [[0.5, 0.6, 0.2, 1.0, 0.3], [0.0, -0.5, 0.4, 0.0, 0.0], [1.5, 1.0, 0.0, 0.0, 0.0]]
OLDV = [[0.4, 0.9, 0.2, 0.5, 0.3], [0.1, -0.2, 0.1, 0.0, 0.0], [1.0, 1.1, 0.0, 0.0, 0.0]]
RET = [[1.0, 1.0, 0.0, 0.8, 0.6], [0.2, 0.3, -0.1, 0.0, 0.0], [0.9, 0.7, 0.0, 0.0, 0.0]]


@case
def value_loss():
    # PPO clipped value loss (OpenAI baselines / TRL): 0.5 * max((v-R)^2, (v_clip-R)^2), token mean.
    v = t(VAL, True)
    ov, ret, m = t(OLDV), t(RET), t(MASK)
    eps = 0.2
    vc = ov + (v - ov).clamp(-eps, eps)
    per = 0.5 * torch.max((v - ret) ** 2, (vc - ret) ** 2)
    loss = (per * m).sum() / m.sum()
    loss.backward()
    clipfrac = ((((vc - ret) ** 2 > (v - ret) ** 2).double()) * m).sum() / m.sum()
    emit("value_loss", loss=loss, clipfrac=clipfrac, grad_values=v.grad)


RW = [[0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.0, 0.5, 7.0, 7.0], [-0.2, 2.0, 7.0, 7.0, 7.0]]


def gae(rew, val, mask, gamma, lam):
    # Schulman et al. 2016 (GAE), backwards over the valid tokens of each row, V=0 after the end.
    rew, val = np.array(rew), np.array(val)
    adv = np.zeros_like(rew)
    for b in range(rew.shape[0]):
        idx = [i for i in range(rew.shape[1]) if mask[b][i]]
        last = 0.0
        next_v = 0.0
        for i in reversed(idx):
            delta = rew[b, i] + gamma * next_v - val[b, i]
            last = delta + gamma * lam * last
            adv[b, i] = last
            next_v = val[b, i]
    ret = (adv + val) * np.array(mask)
    return adv, ret


@case
def gae_cases():
    for (g, l) in [(1.0, 0.95), (0.99, 0.9)]:
        adv, ret = gae(RW, VAL, MASK, g, l)
        emit(f"gae_{g}_{l}", advantages=adv, returns=ret)


@case
def kl_estimators():
    # Schulman 2020, "Approximating KL divergence": samples from the policy q, r = p_ref / q.
    logp, ref, m = t(LOGP), t(REF), t(MASK)
    logr = ref - logp
    k1 = -logr
    k2 = 0.5 * logr ** 2
    k3 = (torch.exp(logr) - 1) - logr
    mm = lambda x: (x * m).sum() / m.sum()
    emit("kl_estimators", k1=mm(k1), k2=mm(k2), k3=mm(k3), k3_tokens=k3 * m)


@case
def entropy_case():
    logits = t([[[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 0.0]],
                [[-0.5, 0.5, 2.5, 1.0], [1.0, 1.0, -3.0, 2.0], [0.2, 0.1, 0.0, -0.1]]], True)
    m = t([[1, 1, 0], [1, 1, 1]])
    logp = F.log_softmax(logits, -1)
    ent = -(logp.exp() * logp).sum(-1)
    mean = (ent * m).sum() / m.sum()
    mean.backward()
    emit("entropy", per_token=ent, mean=mean, grad_logits=logits.grad)


G_REW = [1.0, 0.0, 0.5, 1.0, 0.2, 0.2, 0.9, 0.1]


@case
def group_advantages():
    r = np.array(G_REW).reshape(2, 4)
    mean = r.mean(1, keepdims=True)
    std = r.std(1, ddof=1, keepdims=True)
    grpo = (r - mean) / (std + 1e-4)  # Shao et al. 2024 / TRL (unbiased std, eps 1e-4)
    dr = r - mean  # Liu et al. 2025 (Dr. GRPO)
    k = r.shape[1]
    rloo = r - (r.sum(1, keepdims=True) - r) / (k - 1)  # Ahmadian et al. 2024
    emit("group_advantages", grpo=grpo, dr_grpo=dr, rloo=rloo)


@case
def reinforce_pp():
    # Hu 2025 (REINFORCE++): token reward -beta*k1 (+ score at the last valid token), return-to-go
    # with gamma, then advantages normalised over all valid tokens of the batch (population std, eps 1e-8).
    logp, ref, m = np.array(LOGP), np.array(REF), np.array(MASK, dtype=float)
    scores = [1.0, -0.5, 0.3]
    beta, gamma = 0.01, 1.0
    rew = -beta * (logp - ref) * m
    for b in range(3):
        last = int(m[b].sum()) - 1
        rew[b, last] += scores[b]
    ret = np.zeros_like(rew)
    for b in range(3):
        run = 0.0
        for i in reversed(range(5)):
            if m[b, i]:
                run = rew[b, i] + gamma * run
                ret[b, i] = run
    vals = ret[m > 0]
    mu, sd = vals.mean(), vals.std()
    adv = (ret - mu) / (sd + 1e-8) * m
    emit("reinforce_pp", returns=ret, advantages=adv)


@case
def grpo_loss():
    # DeepSeekMath eq. 3 with k3 KL (eq. 4): per-token clipped surrogate + beta*k3,
    # mean over each sequence's tokens, then over sequences. Advantages broadcast from group_advantages.
    logp = t(LOGP, True)
    old, ref, m = t(OLD), t(REF), t(MASK)
    adv = t([1.5, -0.5, 0.8]).reshape(3, 1).expand(3, 5)
    eps, beta = 0.2, 0.04
    ratio = torch.exp(logp - old)
    surr = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    logr = ref - logp
    k3 = torch.exp(logr) - logr - 1
    per = surr + beta * k3
    loss = ((per * m).sum(1) / m.sum(1)).mean()
    loss.backward()
    emit("grpo_loss", loss=loss, kl=(k3 * m).sum() / m.sum(), grad_logp=logp.grad)


@case
def truncated_is():
    # Truncated importance weights min(pi_old / mu_behaviour, cap) (IMPALA rho-bar; TIS cap 2).
    old, m = np.array(OLD), np.array(MASK, dtype=float)
    behav = np.array([[-1.0, -0.5, -1.5, -0.3, -0.2], [-0.2, -2.0, -0.9, 0.0, 0.0], [-2.0, -0.1, 0.0, 0.0, 0.0]])
    w = np.minimum(np.exp(old - behav), 2.0) * m
    emit("truncated_is", weights=w, mean=(w.sum() / m.sum()), truncated_frac=((np.exp(old - behav) > 2.0) * m).sum() / m.sum())


# ---------------------------------------------------------------- reward models
@case
def bradley_terry():
    # Ouyang et al. 2022 / Llama 2 (Touvron et al. 2023, eq. 2): -log sigma(r_c - r_r - m).
    rc = t([1.2, 0.3, -0.5, 2.0], True)
    rr = t([0.2, 0.8, -1.5, 1.9], True)
    m = t([1.0, 0.0, 0.5, 0.33])
    loss = (-F.logsigmoid(rc - rr - m)).mean()
    loss.backward()
    emit("bradley_terry_margin", loss=loss, grad_chosen=rc.grad, grad_rejected=rr.grad,
         accuracy=((rc - rr) > 0).double().mean())
    rc2, rr2 = t([1.2, 0.3, -0.5, 2.0]), t([0.2, 0.8, -1.5, 1.9])
    emit("bradley_terry_plain", loss=(-F.logsigmoid(rc2 - rr2)).mean())


@case
def armo():
    # Wang et al. 2024 (ArmoRM): stage 1 masked per-objective regression (MSE); stage 2 gating:
    # score = sum_k softmax(gate)_k r_k, Bradley-Terry on beta*(score_c - score_r).
    pred = t([[0.5, 1.0], [2.0, -1.0], [0.0, 0.3]], True)
    target = t([[1.0, 0.0], [1.5, 0.0], [0.2, 0.0]])
    mask = t([[1, 1], [1, 0], [0, 1]])
    reg = (((pred - target) ** 2) * mask).sum() / mask.sum()
    reg.backward()
    emit("armo_regression", loss=reg, grad_pred=pred.grad)
    rc = t([[1.0, 0.5, -0.2], [0.3, 0.9, 0.1]], True)
    gc = t([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]], True)
    rr = t([[0.8, 0.1, 0.4], [0.5, 0.2, 0.0]], True)
    gr = t([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], True)
    beta = 2.0
    sc = (torch.softmax(gc, -1) * rc).sum(-1)
    sr = (torch.softmax(gr, -1) * rr).sum(-1)
    loss = (-F.logsigmoid(beta * (sc - sr))).mean()
    loss.backward()
    emit("armo_gated", loss=loss, score_chosen=sc, score_rejected=sr, grad_gate_chosen=gc.grad)


@case
def constrained():
    # Moskovitz et al. 2023: lambda_i <- proj(lambda_i - eta (v_i - theta_i)); at_least: max(0, .).
    lam = np.array([0.5, 0.01, 0.0])
    v = np.array([0.2, 0.9, 0.4])
    theta = np.array([0.5, 0.5, 0.0])
    eta = 0.1
    at_least = np.maximum(0, lam - eta * (v - theta))
    equal = lam - eta * (v - theta)
    emit("constrained_update", at_least=at_least, equal=equal)


# ---------------------------------------------------------------- APO
@case
def apo():
    # He et al. 2024 (APO), Nesterov extrapolation: theta_hat = theta_t + alpha (theta_t - theta_{t-1}).
    cur = np.array([0.5, -1.0, 2.0, 0.0])
    prev = np.array([0.4, -0.5, 2.5, 0.1])
    emit("apo_extrapolate", alpha_0_3=cur + 0.3 * (cur - prev))


def main():
    filt = sys.argv[1] if len(sys.argv) > 1 else ""
    for fn in CASES:
        if filt in fn.__name__ or not filt:
            fn()


if __name__ == "__main__":
    main()
