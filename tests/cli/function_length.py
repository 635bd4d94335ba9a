#!/usr/bin/python3
"""No function in src/ or include/ longer than LIMIT lines (default 90: "about 80", with room for
a command's option table). A function is a brace block opened at namespace or class scope after a
parenthesised signature; lambdas and blocks inside it count towards it. Comments, strings and
preprocessor lines are ignored. Usage: function_length.py [LIMIT]; exit 1 naming each long one."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def strip(s):
    s = re.sub(r'^\s*#[^\n]*', '', s, flags=re.M)
    s = re.sub(r'//[^\n]*', '', s)
    s = re.sub(r'/\*.*?\*/', lambda m: '\n' * m.group(0).count('\n'), s, flags=re.S)
    s = re.sub(r'R"\((.*?)\)"', lambda m: '""' + '\n' * m.group(0).count('\n'), s, flags=re.S)
    s = re.sub(r'"(\\.|[^"\\\n])*"', '""', s)
    return re.sub(r"'(\\.|[^'\\\n])*'", "''", s)


def functions(path):
    stack, text, line = [], '', 1
    for ch in strip(path.read_text()):
        if ch == '\n':
            line += 1
        if ch == '{':
            t = text.strip()
            cur = stack[-1][0] if stack else 'ns'
            if t.startswith('namespace') or t.startswith('extern'):
                kind = 'ns'
            elif re.search(r'\b(class|struct|union|enum)\b', t.split('(')[0]) and cur in ('ns', 'class'):
                kind = 'class'
            elif cur in ('ns', 'class') and '(' in t and not re.search(r'=\s*$', t) and not t.endswith(','):
                kind = 'func'
            else:
                kind = 'block'
            name = re.sub(r'\(.*', '', t, flags=re.S).split()[-1] if kind == 'func' and t.split('(')[0].split() else ''
            stack.append((kind, line, name))
            text = ''
        elif ch == '}':
            if stack:
                kind, start, name = stack.pop()
                if kind == 'func':
                    yield line - start + 1, start, name
            text = ''
        elif ch == ';':
            text = ''
        else:
            text += ch


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    files = subprocess.check_output(['git', 'ls-files', 'src/*.cpp', 'src/*.h', 'include/*.h'], cwd=ROOT,
                                    text=True).split()
    long_ones, count = [], 0
    for f in files:
        for n, start, name in functions(ROOT / f):
            count += 1
            if n > limit:
                long_ones.append(f"{f}:{start}: {name} is {n} lines")
    if count < 100:
        print(f"FAIL: only {count} functions found; the scanner is broken")
        return 1
    for x in long_ones:
        print("FAIL:", x)
    if long_ones:
        print(f"FAIL: {len(long_ones)} functions over {limit} lines; split them into named steps")
        return 1
    print(f"ok: {count} functions in {len(files)} files, none over {limit} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
