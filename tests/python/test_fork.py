"""Forked workers: a process that imported rtml and used its thread pool (backfill,
Transforms.fit) and then forks (os.fork, multiprocessing's 'fork' start method, a
gunicorn --preload style master) must get children whose parallel calls finish, with
correct results and a working multi-threaded pool, not a deadlock. Also: the pool's size
follows RTML_NUM_THREADS, then RAYON_NUM_THREADS, then the CPU count.

Every scenario runs in a fresh interpreter (so environment variables and the pool's state
are its own) under a timeout: a hang fails the test instead of hanging CI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import rtml

HERE = os.path.dirname(os.path.abspath(__file__))
# A child that deadlocks is killed after this long (normal runs take a few seconds even on a
# debug build on a busy 2-core machine).
TIMEOUT = 120

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def run(code: str, env: dict | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that can import rtml and fork_workload; fail on a
    non-zero exit or a timeout (the whole process group is killed)."""
    full_env = dict(os.environ)
    for k in ("RTML_NUM_THREADS", "RAYON_NUM_THREADS"):
        full_env.pop(k, None)
    full_env["PYTHONPATH"] = os.pathsep.join([HERE, *sys.path])
    full_env.update(env or {})
    prelude = textwrap.dedent(
        """
        import os, sys, time, warnings
        warnings.simplefilter("ignore")  # the debug-build warning
        import rtml
        import fork_workload as w

        def wait(pid, timeout):
            # waitpid with a deadline: a child still running after it is killed (a hang).
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return os.waitstatus_to_exitcode(status)
                time.sleep(0.02)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "hang"

        def child(fn):
            # Fork; the child runs fn() and exits 0 on success, 1 on an exception.
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    fn()
                    code = 0
                except BaseException:
                    import traceback
                    traceback.print_exc()
                finally:
                    sys.stdout.flush(); sys.stderr.flush()
                    os._exit(code)
            return pid
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_os_fork_after_parallel_work():
    """The parent warms the pool (backfill + fit + transform), then forks three children in
    sequence and two at once; each reruns the whole workload with checked results and shows
    a pool of the same size as the parent's, with live threads."""
    run(
        """
        w.check_all(1)
        parent_threads = rtml.num_threads()
        assert parent_threads >= 1 and w.pool_threads() == parent_threads, (parent_threads, w.pool_threads())

        def work(seed):
            def fn():
                w.check_all(seed)
                assert rtml.num_threads() == parent_threads
                # the child's parallel sections ran on a live pool of its own
                assert w.pool_threads() == parent_threads, w.pool_threads()
            return fn

        for seed in (2, 3, 4):
            assert wait(child(work(seed)), 60) == 0, seed
        pids = [child(work(s)) for s in (5, 6)]
        assert [wait(p, 60) for p in pids] == [0, 0]
        # the parent still works after its children
        w.check_all(7)
        """
    )


def test_fork_of_a_fork():
    """Grandchildren: the child uses the pool, forks, and the grandchild uses it again."""
    run(
        """
        w.check_backfill(1)

        def grandchild():
            w.check_all(3)
            assert w.pool_threads() == rtml.num_threads()

        def middle():
            w.check_backfill(2)
            assert wait(child(grandchild), 60) == 0

        assert wait(child(middle), 90) == 0
        """
    )


def test_fork_while_another_thread_is_in_a_parallel_section():
    """A fork while another thread of the parent is inside a backfill (its pool busy) must
    still give the child a working pool."""
    run(
        """
        import threading
        # Warm up first, single-threaded: forking while another thread is inside a Python
        # import deadlocks the child on the import lock whatever rtml does (a CPython hazard
        # of fork with threads, not the subject here).
        w.check_all(10)
        stop = threading.Event()
        errors = []

        def busy():
            try:
                while not stop.is_set():
                    w.check_backfill(11)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=busy)
        t.start()
        try:
            for seed in range(3):
                time.sleep(0.05 * seed)
                assert wait(child(lambda: w.check_all(20)), 60) == 0
        finally:
            stop.set()
            t.join(60)
        assert not t.is_alive() and not errors, errors
        """
    )


def test_multiprocessing_fork_pool():
    """multiprocessing with the 'fork' start method, after the parent used the pool."""
    run(
        """
        import multiprocessing as mp
        w.check_all(1)

        def task(seed):
            w.check_all(seed)
            return rtml.num_threads(), w.pool_threads()

        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            res = pool.map_async(task, [2, 3, 4, 5]).get(timeout=90)
        n = rtml.num_threads()
        assert res == [(n, n)] * 4, res
        """
    )


def test_preload_master_and_workers():
    """gunicorn --preload style: the master restores an engine, warms up with a backfill and a
    fit, then forks workers; each worker serves gets and ingests into its own copy of the
    engine, and runs a backfill, without seeing the others' events."""
    run(
        """
        import pyarrow as pa
        fs = w.feature_set()
        events, spine = w.data(1)
        eng = fs.online()
        eng.ingest(events)
        w.check_all(1)
        t_end = w.BASE + 7 * 3600 * w.S
        before = eng.get(5, at=t_end)

        def worker(i):
            def fn():
                assert eng.get(5, at=t_end) == before
                eng.ingest({"k": 5, "ts": t_end - w.S, "v": float(i + 1)})
                after = eng.get(5, at=t_end)
                assert after["n"] == before["n"] + 1 and after["s"] == before["s"] + i + 1, (i, after)
                w.check_all(100 + i)
            return fn

        pids = [child(worker(i)) for i in range(3)]
        assert [wait(p, 90) for p in pids] == [0, 0, 0]
        assert eng.get(5, at=t_end) == before  # workers' ingests stayed in the workers
        """
    )


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"RTML_NUM_THREADS": "3"}, 3),
        ({"RAYON_NUM_THREADS": "2"}, 2),
        ({"RTML_NUM_THREADS": "1", "RAYON_NUM_THREADS": "4"}, 1),
        ({"RTML_NUM_THREADS": "0", "RAYON_NUM_THREADS": "2"}, 2),  # 0 = default: next source
        ({}, len(os.sched_getaffinity(0))),
    ],
)
def test_thread_count_env(env, expected):
    """rtml.num_threads() reports the configured size and the pool really has that many
    threads (counted by name in /proc after a backfill and a fit); a forked child keeps it."""
    run(
        f"""
        w.check_all(1)
        assert rtml.num_threads() == {expected}, rtml.num_threads()
        assert w.pool_threads() == {expected}, w.pool_threads()
        def fn():
            w.check_backfill(2)
            assert w.pool_threads() == {expected}
        assert wait(child(fn), 60) == 0
        """,
        env=env,
    )


def test_thread_count_env_in_child():
    """The variable is read when a process builds its pool: a child that sets it before its
    first parallel call gets that size."""
    run(
        """
        w.check_backfill(1)
        def fn():
            os.environ["RTML_NUM_THREADS"] = "2"
            w.check_backfill(2)
            assert rtml.num_threads() == 2 and w.pool_threads() == 2, w.pool_threads()
        assert wait(child(fn), 60) == 0
        """,
        env={"RTML_NUM_THREADS": "3"},
    )


@pytest.mark.parametrize("value", ["four", "-2", "100000"])
def test_invalid_thread_count_is_reported_and_ignored(value):
    """A value that is not a thread count (or above 1024) is ignored with a message on stderr
    naming the variable; the next source applies."""
    proc = run(
        """
        w.check_backfill(1)
        assert rtml.num_threads() == 2, rtml.num_threads()
        """,
        env={"RTML_NUM_THREADS": value, "RAYON_NUM_THREADS": "2"},
    )
    assert "RTML_NUM_THREADS" in proc.stderr and value in proc.stderr, proc.stderr


def test_num_threads_in_this_process():
    assert isinstance(rtml.num_threads(), int) and rtml.num_threads() >= 1
