"""A command started stopped before exec, so that probes are on before its first instruction.

subprocess.Popen cannot do this: it waits for the exec to happen before returning.
The command may run as another user (`vmtrace run -u USER`) while vmtrace keeps root: the
child takes the user's uid, gid, supplementary groups and HOME before it waits to be let go.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import sys
from dataclasses import dataclass

from vmtrace.errors import TargetError, UsageError


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who the command runs as: a user of the passwd database."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @staticmethod
    def resolve(spec: str) -> RunAs:
        """A user name, or a numeric uid, from the passwd database."""
        try:
            pw = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
        except (KeyError, OverflowError):
            raise UsageError(
                f"failed to run the command as {spec}: no such user (fix: a user name or uid "
                "from `getent passwd`, e.g. -u nobody)"
            ) from None
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
        return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)

    def check_allowed(self) -> None:
        """Only root may become another user (vmtrace with CAP_BPF+CAP_PERFMON cannot)."""
        if self.uid != os.getuid() and os.geteuid() != 0:
            raise UsageError(
                f"failed to run the command as {self.name}: changing user needs root "
                "(fix: run vmtrace as root, or leave out -u)"
            )

    def become(self) -> None:
        """In the child: groups first, then gid, then uid (after which nothing else can)."""
        os.setgroups(list(self.groups))
        os.setgid(self.gid)
        os.setuid(self.uid)
        os.environ.update(HOME=self.home, USER=self.name, LOGNAME=self.name)


class HeldChild:
    def __init__(self, command: list[str], run_as: RunAs | None = None) -> None:
        if not command:
            raise TargetError("failed to start the command: it is empty")
        if run_as is not None:
            run_as.check_allowed()
        r, self._release = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            # Nothing of vmtrace runs here: a Ctrl-C while held ends this process by the
            # signal (not by a KeyboardInterrupt unwinding a copy of the tracer), and any
            # failure ends it without running the command.
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(self._release)
                if run_as is not None:
                    try:
                        run_as.become()
                    except OSError as e:
                        print(
                            f"vmtrace: failed to run the command as {run_as.name}: {e.strerror}",
                            file=sys.stderr,
                        )
                        os._exit(127)
                go = os.read(r, 1)
                if go != b"g":
                    os._exit(127)  # the tracer gave up: never run untraced
                os.close(r)
                os.execvpe(command[0], command, os.environ)
            except OSError as e:
                print(f"vmtrace: failed to run {command[0]}: {e.strerror}", file=sys.stderr)
            finally:
                os._exit(127)
        os.close(r)
        self.pid = pid
        self.command = command
        self.returncode: int | None = None

    def release(self) -> None:
        if self._release >= 0:
            os.write(self._release, b"g")
            os.close(self._release)
            self._release = -1

    def abandon(self) -> None:
        """Tracing failed before the exec: the child exits without running the command."""
        if self._release >= 0:
            os.close(self._release)
            self._release = -1
        self.wait()

    def _reap(self, flags: int) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            self.returncode = 127
            return self.returncode
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait_forwarding(self, signals: tuple[signal.Signals, ...]) -> int:
        """wait(), passing SIGNALS received meanwhile on to the command."""

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

        old = {sig: signal.signal(sig, forward) for sig in signals}
        try:
            return self.wait()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def wait(self) -> int:
        while True:
            try:
                rc = self._reap(0)
            except InterruptedError:
                continue
            assert rc is not None
            return rc
