"""Runs fairseq's console scripts in forked children of one process that imported fairseq once.

A tiny ``fairseq-train`` run spends about 7 of its ~12 s here importing fairseq. The tests start one
server (``serve``) that imports ``fairseq_cli.train``/``generate``/``preprocess`` and ``LAZY`` (what their
children would import on their own) and nothing else, and each ``run TOOL ARGS`` client hands it its argv,
cwd, environment and stdin/stdout/stderr; the server forks, and the child runs the console script's own
entry point (``cli_main``) with them, runs the atexit hooks as an interpreter exit would, and exits with the
same status a real process would.
A child whose client dies (killed) is killed too. ``SLT_TEST_HOOK=FILE`` in a request's environment: the
child runs FILE first (a fault to inject, as a sitecustomize would in a real process). Client side: standard
library only. ``fairseq-slt`` runs the same way, its module imported in the child only: the server never
imports the plugin, so a tool run without ``--user-dir`` is stock fairseq.
"""
import json
import os
import select
import signal
import socket
import sys

TOOLS = {"fairseq-train": "fairseq_cli.train", "fairseq-generate": "fairseq_cli.generate",
         "fairseq-preprocess": "fairseq_cli.preprocess"}


def _plugin_main():
    """fairseq-slt's console script, imported in the forked child (torch and fairseq already are)."""
    from fairseq_slt.cli.main import main
    sys.exit(main())


# imported lazily by every training child: torch's first optimizer imports torch._dynamo (and sympy with it),
# 2 of a tiny fairseq-train run's 4 s after the fork
LAZY = ("torch._dynamo",)


def serve(path: str) -> None:
    import importlib
    entries = {tool: importlib.import_module(module).cli_main for tool, module in TOOLS.items()}
    for module in LAZY:
        importlib.import_module(module)
    entries["fairseq-slt"] = _plugin_main
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    running = {}  # client connection -> child pid
    while True:
        readable, _, _ = select.select([listener, sys.stdin, *running], [], [], 0.05)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):  # the test session ended
            for pid in running.values():
                os.kill(pid, signal.SIGKILL)
            return
        if listener in readable:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                _child(entries[request["tool"]], request, fds)
            for fd in fds:
                os.close(fd)
            running[conn] = pid
        for conn in [c for c in readable if c in running]:  # readable while waiting means the client is gone
            os.kill(running[conn], signal.SIGKILL)
        for conn, pid in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                try:
                    conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
                except OSError:
                    pass
                conn.close()
                del running[conn]


def _child(entry, request, fds) -> None:
    import atexit
    import traceback
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # as a new interpreter would: PYTHONPATH first (for what the server has not imported itself)
    sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.argv = [request["tool"], *request["args"]]
    code = 0
    try:
        if os.environ.get("SLT_TEST_HOOK"):
            with open(os.environ["SLT_TEST_HOOK"]) as hook:
                exec(compile(hook.read(), os.environ["SLT_TEST_HOOK"], "exec"), {"__name__": "slt_test_hook"})
        entry()
    except SystemExit as stop:  # as the interpreter reports an uncaught SystemExit
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: B036 (a real process prints any uncaught error and exits 1)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(path: str, tool: str, args) -> int:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    request = {"tool": tool, "args": list(args), "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(client, [json.dumps(request).encode()], [0, 1, 2])
    reply = b""
    while chunk := client.recv(64):
        reply += chunk
    if not reply:
        sys.exit(f"launcher: the server dropped {tool}")
    return int(reply)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        code = run(sys.argv[2], sys.argv[3], sys.argv[4:])
        if code < 0:  # the child died of a signal: so does the client
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        sys.exit(code)
