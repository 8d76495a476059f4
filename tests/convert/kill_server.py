"""Forks `llamakit convert` CLI processes from a warm interpreter, for test_kill.py.

Each child runs exactly what `python -m llamakit convert ...` runs (`llamakit.cli.main`, which `entry()` calls);
forking skips the seconds of `import torch` a fresh interpreter pays, so twenty SIGKILL
trials fit in the default test run. The server never runs a torch op before forking,
so no thread pool is copied into the children.

Protocol, one JSON object per line: {"op": "run", "args": [...]} → {"pid": N};
{"op": "wait", "pid": N} → {"exit": code} or {"signal": n}.
"""

import json
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"

import huggingface_hub.serialization  # noqa: E402,F401 - warm imports only
import rich.progress  # noqa: E402,F401
import safetensors.torch  # noqa: E402,F401
import torch  # noqa: E402,F401

import llamakit.cli  # noqa: E402
from llamakit.convert import api, arch, detect, hf, keymap, meta, output, pth, tokenizer  # noqa: E402,F401

for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "run":
        pid = os.fork()
        if pid == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            sys.argv = ["llamakit", "convert", *cmd["args"]]
            try:
                llamakit.cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        reply = {"exit": os.waitstatus_to_exitcode(status)} if os.WIFEXITED(status) else {"signal": os.WTERMSIG(status)}
        print(json.dumps(reply), flush=True)
