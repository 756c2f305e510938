#!/usr/bin/env python3
"""Fault matrix: kill probe inside its writes, fill its disk, race two writers, stop it by signal,
and check that every results file is either exactly right or visibly incomplete, and that
rerunning the same command completes it bit for bit.

    .venv/bin/python benches/fault_matrix.py            # the whole matrix (a few minutes)
    .venv/bin/python benches/fault_matrix.py --short    # what `cargo test` runs (tests/faults.rs)

Faults, each caused for real:
  - grad kill:  `strace -f -e inject=pwrite64:signal=KILL:when=N` kills `probe grad` inside its Nth
                write (HDF5 writes with pwrite64), at points spread over every write of a run;
  - train kill: the same on `probe train` (its log's pwrite64 and its checkpoints' write calls),
                then `probe train --resume`;
  - disk full:  `--out` on a tmpfs too small for the results (needs root to mount);
  - race:       a second `probe grad` (and one with --force) on an --out another one is writing,
                with and without HDF5_USE_FILE_LOCKING=FALSE;
  - signal:     SIGTERM and SIGINT in the middle of a run;
  - shape cache: the run killed at the cache file's rename, the file cut short, emptied or with a
                byte flipped, and the cache folder on a full disk.
A case counts as recovered when: the file left behind (if any) opens in h5py, its `rows` complete
rows equal the uninterrupted run's first rows and it is not marked complete; the fault's exit
code and message are the documented ones; and the rerun's file equals the uninterrupted run's in
every dataset and attribute bit for bit (`/seconds` and `command_line` aside).
"""
import argparse
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.environ.get("PROBE_BIN") or os.path.join(ROOT, "target", "release", "probe")
MODEL = os.path.join(ROOT, "models", "mlp.onnx")
IGNORED_DATASETS = {"seconds"}
IGNORED_ATTRS = {"command_line"}


def run(args, env=None, **kw):
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run(args, capture_output=True, text=True, env=e, cwd=ROOT, **kw)


def snapshot(path):
    """Every dataset (first `rows` rows of per-row ones) and attribute, as bytes."""
    out = {}
    with h5py.File(path, "r") as f:
        rows = int(f.attrs.get("rows", -1))
        for k, v in f.attrs.items():
            if k not in IGNORED_ATTRS:
                out["@" + k] = repr(v)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.split("/")[-1] not in IGNORED_DATASETS:
                a = obj[()]
                if isinstance(a, np.ndarray) and a.dtype == object:
                    a = np.array([x if isinstance(x, bytes) else str(x).encode() for x in a.ravel()])
                b = np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else repr(a).encode()
                out[name] = (str(getattr(a, "dtype", "")), getattr(a, "shape", ()), hashlib.sha256(b).hexdigest())
                # Its named dimensions (schema 3): the dimension scales attached to each axis.
                out[name + " dims"] = repr([[s.name for s in d.values()] for d in obj.dims])

        f.visititems(visit)
    return rows, out


def safetensors_digest(path):
    """A checkpoint's content: its header (parsed: metadata key order is not fixed) and its data."""
    b = open(path, "rb").read()
    n = int.from_bytes(b[:8], "little")
    header = json.loads(b[8:8 + n])
    return json.dumps(header, sort_keys=True), hashlib.sha256(b[8 + n:]).hexdigest()


def checkpoint_files(d):
    return {os.path.relpath(p, d): safetensors_digest(p)
            for p in glob.glob(os.path.join(d, "**", "*.safetensors"), recursive=True)}


def prefix_ok(path, ref, why):
    """The file left by a fault: readable, not complete, its rows a prefix of the reference's."""
    if not os.path.exists(path):
        return True
    try:
        with h5py.File(path, "r") as f:
            rows = int(f.attrs["rows"])
            complete = int(f.attrs["complete"])
            ref_f = h5py.File(ref, "r")
            ref_rows = int(ref_f.attrs["rows"])
            if complete and rows != ref_rows:
                why.append(f"marked complete with {rows} of {ref_rows} rows")
                return False
            for name in ("loss", "checkpoints/sha256", "grad/l2", "step"):
                if name in f:
                    if f[name].shape[0] != rows:
                        why.append(f"{name} has {f[name].shape[0]} entries, rows = {rows}")
                        return False
                    if not np.array_equal(f[name][:rows], ref_f[name][:rows]):
                        why.append(f"{name}'s first {rows} rows differ from the reference")
                        return False
            ref_f.close()
    except Exception as e:  # noqa: BLE001 - any failure to read is the finding
        why.append(f"unreadable after the fault: {e}")
        return False
    return True


def same(path, ref, why):
    try:
        a, b = snapshot(path), snapshot(ref)
    except Exception as e:  # noqa: BLE001
        why.append(f"unreadable after the rerun: {e}")
        return False
    if a == b:
        return True
    ka, kb = a[1], b[1]
    diff = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
    why.append(f"rows {a[0]} vs {b[0]}; differs in {diff[:6]}")
    return False


class Matrix:
    def __init__(self, work, short):
        self.work = work
        self.short = short
        self.results = []  # (group, ok, detail)

    def record(self, group, ok, detail):
        self.results.append((group, ok, detail))
        mark = "ok  " if ok else "FAIL"
        print(f"  {mark} {group}: {detail}", flush=True)

    # --- fixtures ------------------------------------------------------------------------------
    def train_args(self, out):
        return [PROBE, "train", "--model", MODEL, "--data", "fashion-mnist", "--limit", "512",
                "--steps", "32", "--batch", "64", "--ckpt-every", "8", "--lr", "0.05",
                "--momentum", "0.9", "--threads", "1", "--out", out]

    def setup(self):
        run_dir = os.path.join(self.work, "run")
        r = run(self.train_args(run_dir))
        assert r.returncode == 0, r.stderr
        self.train_ref = run_dir
        self.ckpts = sorted(p for p in glob.glob(os.path.join(run_dir, "step-*.safetensors"))
                            if ".optim." not in p)
        assert len(self.ckpts) == 5, self.ckpts
        self.ref = os.path.join(self.work, "ref.h5")
        r = run(self.grad_args(self.ref))
        assert r.returncode == 0, r.stderr
        self.ref_size = os.path.getsize(self.ref)

    def grad_args(self, out, force=False, limit="1000"):
        a = [PROBE, "grad", "--model", MODEL, "--ckpt", *self.ckpts, "--data", "fashion-mnist",
             "--limit", limit, "--batch", "250", "--weight-decay", "5e-4", "--save-grad",
             "--threads", "1", "--out", out]
        return a + (["--force"] if force else [])

    @staticmethod
    def writes(args, calls):
        """How many `calls` syscalls the command makes, counted by strace."""
        with tempfile.NamedTemporaryFile(suffix=".trace") as t:
            r = run(["strace", "-f", "-qq", "-o", t.name, "-e", "trace=" + calls, *args])
            assert r.returncode == 0, r.stderr
            return sum(1 for line in open(t.name) if "(" in line and calls + "(" in line)

    @staticmethod
    def points(total, n):
        return sorted({max(1, round(1 + i * (total - 1) / max(1, n - 1))) for i in range(n)})

    # --- faults --------------------------------------------------------------------------------
    def grad_kills(self, n):
        total = self.writes(self.grad_args(os.path.join(self.work, "count.h5")), "pwrite64")
        print(f"grad: {total} pwrite64 calls in an uninterrupted run; killing at {n} of them")
        for when in self.points(total, n):
            out = os.path.join(self.work, f"kill-{when}.h5")
            r = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64",
                     "-e", f"inject=pwrite64:signal=KILL:when={when}", *self.grad_args(out)])
            why = []
            killed = r.returncode != 0
            if not killed:
                why.append("the run was not killed")
            ok = killed and prefix_ok(out, self.ref, why)
            kept = h5py.File(out, "r").attrs["rows"] if ok and os.path.exists(out) else "no file"
            r2 = run(self.grad_args(out))
            if r2.returncode != 0:
                why.append(f"rerun exit {r2.returncode}: {r2.stderr.strip()[-300:]}")
                ok = False
            else:
                ok = same(out, self.ref, why) and ok
            self.record("grad kill", ok, f"write {when}/{total}, {kept} rows kept" + (f": {'; '.join(why)}" if why else ""))

    def train_kills(self, n):
        ref_log = snapshot(os.path.join(self.train_ref, "train.h5"))
        ref_files = checkpoint_files(self.train_ref)
        probe_dir = os.path.join(self.work, "count-train")
        totals = {c: self.writes(self.train_args(probe_dir + c), c) for c in ("pwrite64", "write")}
        print(f"train: {totals['pwrite64']} pwrite64 (log) and {totals['write']} write (checkpoints, "
              f"output) calls in an uninterrupted run; killing at {n}")
        cases = [("pwrite64", w) for w in self.points(totals["pwrite64"], (n + 1) // 2)]
        cases += [("write", w) for w in self.points(totals["write"], n // 2)]
        for call, when in cases:
            d = os.path.join(self.work, f"train-{call}-{when}")
            r = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + call,
                     "-e", f"inject={call}:signal=KILL:when={when}", *self.train_args(d)])
            why = []
            if r.returncode == 0:
                why.append("the run was not killed")
            log = os.path.join(d, "train.h5")
            if os.path.exists(log):
                try:
                    h5py.File(log, "r").close()
                except Exception as e:  # noqa: BLE001
                    why.append(f"train.h5 unreadable after the kill: {e}")
            r2 = run(self.train_args(d) + ["--resume"])
            if r2.returncode != 0:
                why.append(f"--resume exit {r2.returncode}: {r2.stderr.strip()[-300:]}")
            else:
                if checkpoint_files(d) != ref_files:
                    why.append("checkpoint files differ from an uninterrupted run's")
                if snapshot(log) != ref_log:
                    why.append("train.h5 differs from an uninterrupted run's")
            self.record("train kill", not why, f"{call} {when}/{totals[call]}" + (f": {'; '.join(why)}" if why else ""))

    def disk_full(self, fractions):
        if os.geteuid() != 0:
            print("disk full: skipped (mounting a tmpfs needs root)")
            return
        for frac in fractions:
            size_k = max(16, int(self.ref_size * frac / 1024))
            mnt = os.path.join(self.work, f"tmpfs-{size_k}k")
            os.makedirs(mnt, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", mnt], check=True)
            try:
                out = os.path.join(mnt, "out.h5")
                r = run(self.grad_args(out))
                why = []
                lines = [line for line in r.stderr.splitlines() if line.startswith("probe: error")]
                if r.returncode == 0:
                    # It fit: then it must be exactly the reference.
                    same(out, self.ref, why)
                    detail = "fit"
                else:
                    detail = f"exit {r.returncode}"
                    if r.returncode != 5:
                        why.append(f"exit {r.returncode}, expected 5: {r.stderr.strip()[-300:]}")
                    if len(lines) != 1 or "out.h5" not in lines[0] or "No space left" not in lines[0]:
                        why.append(f"error line: {lines}")
                    prefix_ok(out, self.ref, why)
                    rows = h5py.File(out, "r").attrs["rows"] if os.path.exists(out) else 0
                    detail += f", {rows} rows kept"
                self.record("disk full", not why, f"{size_k} KiB ({frac:.2f} x the results): {detail}"
                            + (f": {'; '.join(why)}" if why else ""))
            finally:
                subprocess.run(["umount", mnt], check=False)

    def wait_for(self, path, timeout=60):
        t0 = time.time()
        while not os.path.exists(path):
            if time.time() - t0 > timeout:
                return False
            time.sleep(0.01)
        return True

    def race(self, env):
        label = "race" + (" HDF5_USE_FILE_LOCKING=FALSE" if env else "")
        out = os.path.join(self.work, f"race-{len(self.results)}.h5")
        e = dict(os.environ)
        e.update(env)
        a = subprocess.Popen(self.grad_args(out), cwd=ROOT, env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        why = []
        if not self.wait_for(out + ".lock"):
            why.append("the first writer never took the lock")
        a.send_signal(signal.SIGSTOP)
        try:
            for force in (False, True):
                b = run(self.grad_args(out, force=force), env=env)
                if b.returncode != 3 or f"pid {a.pid}" not in b.stderr or out not in b.stderr:
                    why.append(f"second writer{' --force' if force else ''}: exit {b.returncode}: {b.stderr.strip()[-200:]}")
        finally:
            a.send_signal(signal.SIGCONT)
        _, err = a.communicate()
        if a.returncode != 0:
            why.append(f"first writer exit {a.returncode}: {err.strip()[-300:]}")
        else:
            same(out, self.ref, why)
        self.record(label, not why, "second writer refused, first one complete and exact" if not why else "; ".join(why))

    def shape_cache(self):
        """`--shape-cache`, the one file probe writes outside `--out`: killed between its temporary
        file and the rename, damaged on disk, on a full disk. Every run must still give the
        reference's results exactly; a failed cache write costs only the next run's observation."""
        d = os.path.join(self.work, "shapes")

        def args(out):
            return self.grad_args(out, force=True) + ["--shape-cache", d]

        def cached():
            return sorted(os.listdir(d)) if os.path.isdir(d) else []

        def run_exact():
            """Runs once more; what is wrong if it fails or differs from the reference."""
            why = []
            r = run(args(out))
            if r.returncode != 0:
                why.append(f"exit {r.returncode}: {r.stderr.strip()[-300:]}")
            else:
                same(out, self.ref, why)
            return why

        out = os.path.join(self.work, "cache-kill.h5")
        calls = "rename,renameat,renameat2"
        r = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + calls,
                 "-e", f"inject={calls}:signal=KILL:when=1", *args(out)])
        why = []
        left = cached()
        if r.returncode == 0:
            why.append("the run was not killed")
        if not any(".tmp-" in f for f in left) or any(f.endswith(".json") for f in left):
            why.append(f"not killed at the cache's rename: the cache folder holds {left}")
        r2 = run(args(out))
        if r2.returncode != 0:
            why.append(f"rerun exit {r2.returncode}: {r2.stderr.strip()[-300:]}")
        else:
            same(out, self.ref, why)
        whole = [f for f in cached() if f.endswith(".json")]
        if len(whole) != 1:
            why.append(f"after the rerun the cache folder holds {cached()}")
        self.record("shape cache", not why, "killed at its rename, rerun exact" + (f": {'; '.join(why)}" if why else ""))
        if len(whole) != 1:
            return
        path = os.path.join(d, whole[0])
        text = open(path, "rb").read()
        for label, bad in [("cut short", text[: len(text) // 2]), ("emptied", b""),
                           ("a byte flipped", text[:-40] + bytes([text[-40] ^ 1]) + text[-39:])]:
            with open(path, "wb") as f:
                f.write(bad)
            why = run_exact()
            if open(path, "rb").read() != text:
                why.append("the damaged file was not replaced by a whole one")
            self.record("shape cache", not why, f"file {label}, run exact" + (f": {'; '.join(why)}" if why else ""))
        if os.geteuid() != 0:
            print("shape cache on a full disk: skipped (mounting a tmpfs needs root)")
            return
        mnt = os.path.join(self.work, "tmpfs-cache")
        os.makedirs(mnt, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], check=True)
        try:
            fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            d = os.path.join(mnt, "shapes")
            why = run_exact()
            if any(".tmp-" in f for f in cached()):
                why.append(f"a temporary file stayed: {cached()}")
            self.record("shape cache", not why, "full disk under it, run exact" + (f": {'; '.join(why)}" if why else ""))
        finally:
            subprocess.run(["umount", mnt], check=False)

    def signal_stop(self, sig, delay):
        # A longer pass (all 60,000 images a checkpoint, ~0.5 s each), so the signal lands inside.
        limit = "60000"
        ref = os.path.join(self.work, "ref-60000.h5")
        if not os.path.exists(ref):
            r = run(self.grad_args(ref, limit=limit))
            assert r.returncode == 0, r.stderr
        name = signal.Signals(sig).name
        out = os.path.join(self.work, f"sig-{name}-{delay}.h5")
        a = subprocess.Popen(self.grad_args(out, limit=limit), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.wait_for(out + ".lock")
        time.sleep(delay)
        a.send_signal(sig)
        _, err = a.communicate()
        why = []
        want = 128 + sig
        if a.returncode == 0:
            detail = "ended before the signal"
        else:
            detail = f"exit {a.returncode}"
            if a.returncode != want:
                why.append(f"exit {a.returncode}, expected {want}")
            if f"stopped by {name}" not in err:
                why.append(f"no line saying it stopped: {err.strip()[-200:]}")
            prefix_ok(out, ref, why)
            detail += f", {h5py.File(out, 'r').attrs['rows'] if os.path.exists(out) else 0} rows kept"
        r2 = run(self.grad_args(out, limit=limit))
        if r2.returncode != 0:
            why.append(f"rerun exit {r2.returncode}: {r2.stderr.strip()[-200:]}")
        else:
            same(out, ref, why)
        self.record("signal", not why, f"{name} after {delay:.2f} s: {detail}" + (f": {'; '.join(why)}" if why else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="a few points of each kind (for cargo test)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="probe-faults-")
    m = Matrix(work, a.short)
    t0 = time.time()
    m.setup()
    if a.short:
        m.grad_kills(6)
        m.train_kills(4)
        m.disk_full([0.5, 1.2])
        m.race({})
        m.shape_cache()
        m.signal_stop(signal.SIGTERM, 0.5)
    else:
        m.grad_kills(32)
        m.train_kills(12)
        m.disk_full([0.2, 0.5, 0.9, 1.3, 1.7])
        m.race({})
        m.race({"HDF5_USE_FILE_LOCKING": "FALSE"})
        m.shape_cache()
        for sig, delay in [(signal.SIGTERM, 0.2), (signal.SIGTERM, 0.9), (signal.SIGINT, 0.6)]:
            m.signal_stop(sig, delay)
    groups = {}
    for g, ok, _ in m.results:
        n, k = groups.get(g, (0, 0))
        groups[g] = (n + 1, k + ok)
    for g, (n, k) in groups.items():
        print(f"{g}: {k} of {n} recovered exactly")
    n, k = len(m.results), sum(ok for _, ok, _ in m.results)
    print(f"{k} of {n} recovered exactly ({time.time() - t0:.0f} s)")
    if not a.keep:
        subprocess.run(["rm", "-rf", work])
    sys.exit(0 if k == n else 1)


if __name__ == "__main__":
    main()
