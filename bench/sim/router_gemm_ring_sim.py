# Protocol simulation of the router GEMM expert-pair forward's stage ring (templates/kiln/router_gemm_tma.cuh,
# router_gemm_fwd_tma_xmc_kernel) with and without the tail stagger (kRgStagger): 2 CTAs of a cluster, a producer and
# 2 consumer warpgroups each, mbarrier semantics (parity waits that tell only adjacent phases apart, arrival counts,
# transaction bytes that may land before the expect), asynchronous TMA deliveries (x halves multicast to both CTAs,
# w local), stages held by a warpgroup from its read until its release. Random interleavings; checks freedom from
# deadlock, that a warpgroup reads a stage only once the fill it expects has landed there, and that no fill lands in
# a slot a warpgroup still holds. Run: python3 bench/sim/router_gemm_ring_sim.py (prints "bad 0").
# Session 7: the first stagger protocol (producer arrivals for every one-warpgroup fill, the other warpgroup
# observing it) deadlocked here — an observer could be lapped by two phases — which this model caught before a GPU run.
# Protocol simulation of the expert-pair forward's ring with the tail stagger (kRgStagger): 2 CTAs, producer + 2
# consumer warpgroups each, mbarrier semantics (parity waits, arrival counts, transaction bytes that may arrive
# before the expect), asynchronous TMA deliveries, wgmma reads held until release. Random interleavings; checks
# deadlock freedom, that a consumer reads a slot only after the fill it expects landed there, and that no fill
# overwrites a slot a consumer still holds.
import random, sys

class Bar:
    def __init__(s, count): s.count=count; s.pend=count; s.tx=0; s.ph=0
    def arrive(s, n=1):
        s.pend-=n; assert s.pend>=0, "too many arrivals"; s._chk()
    def expect(s, b): s.tx+=b
    def complete(s, b): s.tx-=b; s._chk()
    def _chk(s):
        if s.pend==0 and s.tx==0: s.ph+=1; s.pend=s.count
    def done_parity(s, p): return (s.ph & 1) != p   # try_wait.parity

def run(C, S, tiles, stagger, seed, T_half1=True, clusters_tiles=None):
    rnd=random.Random(seed)
    fills = C + (S if stagger else 0)
    def kind(f): return 0 if (not stagger or f < C-S) else (1 if f < C else 2)
    full=[[Bar(1) for _ in range(S)] for _ in range(2)]
    empty=[[Bar(4) for _ in range(S)] for _ in range(2)]
    # slot contents: (cta, stage, slot) -> fill id ; slots: 'x0','x1','w'
    content={}
    holds={}  # (cta,stage,slot) -> set of (cta,wg) holding it
    pending=[]  # TMA deliveries: (cta, stage, slots, bytes, fid)
    # producers as generators
    def producer(x):
        s=0; ph=0
        for t in range(tiles):
            for f in range(fills):
                while not empty[x][s].done_parity(ph^1): yield
                k=kind(f); gid=(t,f)
                j = f-S if k==2 else f
                h0 = k!=2; h1 = (k!=1) and T_half1; wl = k!=2
                full[x][s].expect((8 if h0 else 0)+(8 if h1 else 0)+(16 if wl else 0)); full[x][s].arrive()
                # x half h fetched by CTA h, multicast to both
                if h0 and x==0:
                    for y in (0,1): pending.append((y,s,'x0',8,(gid,j)))
                if h1 and x==1:
                    for y in (0,1): pending.append((y,s,'x1',8,(gid,j)))
                if wl: pending.append((x,s,'w',16,(gid,j)))
                if k==2 and t==tiles-1: empty[x][s].arrive(2)
                yield
                s+=1
                if s==S: s=0; ph^=1
    def consumer(x, wm):
        s=0; ph=0
        for t in range(tiles):
            last = (t==tiles-1)
            prev=None
            for f in range(fills):
                k=kind(f)
                j = f-S if k==2 else f
                if stagger and k!=0 and k!=1+wm:
                    if prev is not None:
                        release(x,wm,prev); prev=None
                    if wm==1 or not last:
                        while not full[x][s].done_parity(ph): yield
                        for y in (0,1): empty[y][s].arrive()
                    s+=1
                    if s==S: s=0; ph^=1
                    yield; continue
                while not full[x][s].done_parity(ph): yield
                # read: x slot of this wg and w must hold chunk j of this tile
                xs = 'x0' if wm==0 else 'x1'
                cx=content.get((x,s,xs)); cw=content.get((x,s,'w'))
                if T_half1 or wm==0:
                    assert cx is not None and cx[0][0]==t and cx[1]==j, ("x stale", x,wm,t,f,s,cx)
                assert cw is not None and cw[0][0]==t and cw[1]==j, ("w stale", x,wm,t,f,s,cw)
                for sl in (xs,'w'): holds.setdefault((x,s,sl),set()).add((x,wm))
                if prev is not None: release(x,wm,prev)
                prev=s
                s+=1
                if s==S: s=0; ph^=1
                yield
            if prev is not None: release(x,wm,prev)
            yield
    def release(x,wm,st):
        xs='x0' if wm==0 else 'x1'
        for sl in (xs,'w'): holds.get((x,st,sl),set()).discard((x,wm))
        for y in (0,1): empty[y][st].arrive()
    agents=[producer(0),producer(1),consumer(0,0),consumer(0,1),consumer(1,0),consumer(1,1)]
    alive=list(range(6)); steps=0; stall=0
    while alive or pending:
        steps+=1
        if steps>200000: return "too long"
        choices=[('a',i) for i in alive]+[('d',i) for i in range(len(pending))]
        c=rnd.choice(choices)
        if c[0]=='d':
            y,s_,sl,b,fid=pending.pop(c[1])
            assert not holds.get((y,s_,sl)), ("overwrite while held", y,s_,sl,holds[(y,s_,sl)], fid)
            content[(y,s_,sl)]=fid
            full[y][s_].complete(b)
            stall=0
        else:
            i=c[1]
            try:
                next(agents[i])
            except StopIteration:
                alive.remove(i)
            stall+=1
            if stall>20000: return "deadlock (alive %s)"%alive
    return "ok"

bad=0
for C,S in [(32,6),(6,6),(7,6),(12,6),(33,6),(32,7),(9,4),(24,8)]:
    for tiles in (1,2,3):
        for st in (False,True):
            for h1 in (True,False):
                for seed in range(60):
                    r=run(C,S,tiles,st,seed,h1)
                    if r!="ok":
                        bad+=1; print(C,S,tiles,st,h1,seed,r); break
print("bad", bad)
