"""Run scripts as real processes without paying a torch import each time.

The interruption tests start a script, kill it at a random moment and start it again, many
times; a fresh ``python script.py`` spends ~3 s importing torch before any work, so a kill
would mostly land in the import. A *zygote* imports torch and the toolkit once (without
running any torch op, so no thread pool exists yet) and then ``fork``s one child per run.
Each child is a real process running the unmodified script as ``__main__`` with its own
argv, working directory and stdout/stderr files: it can be killed with any signal, and its
exit status is the script's.

Protocol on the zygote's stdin/stdout, one JSON object per line:
``{"script", "args", "cwd", "stdout", "stderr"}`` -> ``{"pid"}`` then ``{"status"}``
(``os.waitstatus_to_exitcode``: negative for a signal).

``FERNAS_ZYGOTE_BLOCK=matplotlib,graphviz`` makes those imports fail in every child
(``sys.modules[name] = None``): the optional-dependency fault, and faster runs.
"""
from __future__ import annotations

import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def _child(cmd: dict) -> None:
    for fd, name in ((1, cmd["stdout"]), (2, cmd["stderr"])):
        f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.chdir(cmd["cwd"])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    script = str(ROOT / cmd["script"])
    sys.argv = [script, *cmd["args"]]
    sys.path[0] = str(ROOT)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - report like the interpreter would, then exit 1
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def serve() -> None:
    """The zygote's loop (run as ``python -m tests.zygote``)."""
    for name in filter(None, os.environ.get("FERNAS_ZYGOTE_BLOCK", "").split(",")):
        sys.modules[name] = None  # type: ignore[assignment]
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401 - the point: imported once, before the forks
    import torch._dynamo  # noqa: F401 - torch.optim imports it on the first optimizer (seconds)
    import nas.runtime.checkpoint  # noqa: F401
    import nas.data  # noqa: F401
    import nas.models  # noqa: F401
    import nas.engine.trainer  # noqa: F401
    for name in ("nas.search.searcher", "nas.search.supernet", "nas.engine.evaluate", "PIL.Image", "yaml"):
        try:
            __import__(name)
        except ImportError:
            pass
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(cmd)
        print(json.dumps({"pid": pid}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), file=out, flush=True)


class Run:
    """One child run: its pid, and (after :meth:`wait`) exit status, stdout and stderr."""

    def __init__(self, zygote: "Zygote", pid: int, out: Path, err: Path) -> None:
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err
        self.returncode: int | None = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # pragma: no cover - already reaped
                pass

    def wait(self, timeout: float = 180) -> "Run":
        if self.returncode is None:
            self.returncode = int(self.zygote._read(timeout)["status"])
        return self

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


class Zygote:
    """Context manager around a zygote process; :meth:`start` forks one script run."""

    def __init__(self, tmp: Path, env: dict[str, str], block: Sequence[str] = ()) -> None:
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = dict(env, FERNAS_ZYGOTE_BLOCK=",".join(block))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.zygote"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.count = 0
        self.current: Run | None = None
        assert self._read(120).get("ready")

    def _read(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("zygote run did not finish in time")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("zygote exited")
                return json.loads(line)

    def start(self, script: str, *args: object, cwd: Path | None = None) -> Run:
        self.count += 1
        out, err = self.tmp / f"run{self.count}.out", self.tmp / f"run{self.count}.err"
        cmd = {"script": script, "args": [str(a) for a in args], "cwd": str(cwd or self.tmp),
               "stdout": str(out), "stderr": str(err)}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        self.current = Run(self, int(self._read(60)["pid"]), out, err)
        return self.current

    def run(self, script: str, *args: object, cwd: Path | None = None, timeout: float = 180) -> Run:
        return self.start(script, *args, cwd=cwd).wait(timeout)

    def close(self) -> None:
        run = self.current
        if run is not None and run.returncode is None:  # a test failed mid-run: end that child
            run.kill(signal.SIGKILL)
            try:
                run.wait(30)
            except (TimeoutError, RuntimeError):  # pragma: no cover
                pass
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    serve()
