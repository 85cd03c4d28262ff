"""PyTorch baselines (eager and torch.compile) at kiln's bench shapes, timed the way `kiln bench` times.
Every module bench/torch/<family>.py defines cases() -> list of rows (op, shape, eager_us, compile_us); this driver
runs them all (or those named with --only). Run on the GPU machine: python3 bench/torch_baseline.py --json OUT.json"""
import argparse, glob, importlib, json, os, sys, traceback
import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch")
sys.path.insert(0, HERE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--only", help="comma-separated module names (default: all)")
    args = ap.parse_args()
    names = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(HERE, "*.py")))
    names = [n for n in names if n != "common" and (not args.only or n in args.only.split(","))]
    rows = []
    for n in names:
        torch.manual_seed(0)
        try:
            rows += importlib.import_module(n).cases()
        except Exception:  # one family's failure must not hide the others
            traceback.print_exc()
        torch.cuda.empty_cache()
    for r in rows:
        print(f"{r['op']:28s} {r['shape']:40s} eager {r['eager_us']:9.1f} us   torch.compile {r['compile_us']:9.1f} us")
    if args.json:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cases=rows), open(args.json, "w"),
                  indent=1)


if __name__ == "__main__":
    main()
