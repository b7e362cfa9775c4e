import sys, time, torch
from attentions import lsh, common
variant, T = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
q, k, v, _ = (x.cuda() for x in common.self_check_inputs(B=8, H=12, T=T, D=64))
q, k, v = (x.requires_grad_() for x in (q, k, v))
p = {**lsh.PARAMS, "dedup": variant != "nodedup"}
def f(q, k, v):
    return lsh.attention(q, k, v, None, p, 0.125, flex=True)
fn = f if variant == "eagerlayout" else torch.compile(f)
t0 = time.time()
out = fn(q, k, v)
out.float().sum().backward()
torch.cuda.synchronize()
ref = lsh.attention(q.detach(), k.detach(), v.detach(), None, p, 0.125, flex=False)
print(variant, T, "ok", f"{time.time()-t0:.1f}s", "max diff vs matmul", (out.detach().float()-ref.float()).abs().max().item(), flush=True)
