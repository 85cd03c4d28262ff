#!/usr/bin/env python3
"""Dynamic SASS instruction count of one path through a kernel (session 12, helper topk5).

Usage: sass_path_count.py FILE.sass START END DECISIONS [--trace OUT]
  FILE.sass  `nvdisasm -c` of a cubin (the first function is walked)
  START/END  hex addresses: the walk counts START … the instruction before END
  DECISIONS  one letter per conditional branch met on the way, in order: T taken, N not taken
             (BRA.DIV is never taken: converged warps; unconditional branches are followed)
Stops at the first conditional branch without a decision and prints the last instructions before it, so a path is
built one decision at a time. For a warp, take the union path (a branch that skips work some lanes do: N).
"""
import re
import sys


def load(path):
    lab, ins, pend = {}, [], []
    for line in open(path):
        m = re.match(r'^(\.L_x_\d+):', line)
        if m:
            pend.append(m.group(1))
            continue
        m = re.match(r'^\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;', line)
        if m:
            a = int(m.group(1), 16)
            if a == 0 and ins:
                break
            for p in pend:
                lab[p] = a
            pend = []
            ins.append((a, m.group(2)))
    return lab, ins


def main():
    path, start, end, seq = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3], 16), list(sys.argv[4])
    out = sys.argv[6] if len(sys.argv) > 6 and sys.argv[5] == '--trace' else None
    lab, ins = load(path)
    idx = {a: i for i, (a, _) in enumerate(ins)}
    i, trace, used = idx[start], [], []
    while True:
        a, t = ins[i]
        if a == end:
            break
        trace.append(f'{a:04x} {t}')
        m = re.search(r'BRA(?:\.DIV)?\s.*`\((\.L_x_\d+)\)', t)
        if m:
            tgt = lab[m.group(1)]
            if 'BRA.DIV' in t:
                i += 1
                continue
            if not (t.startswith('@') or re.search(r'BRA\s+!?U?P\d', t)):
                i = idx[tgt]
                continue
            if not seq:
                print('\n'.join(trace[-8:]))
                print(f'UNDECIDED {a:04x} -> {tgt:04x} after {len(trace)} instructions, decisions {"".join(used)}')
                sys.exit(1)
            d = seq.pop(0)
            used.append(d)
            i = idx[tgt] if d == 'T' else i + 1
            continue
        i += 1
    print(f'COUNT {len(trace)} decisions {"".join(used)}')
    if out:
        open(out, 'w').write('\n'.join(trace) + '\n')


if __name__ == '__main__':
    main()
