"""Remote throughput: rows/s of ``streamsgd fit`` from local disk and from a loopback S3
server (moto_server, started and stopped here), beside the raw read rate of each.

The raw rate is pyarrow decoding every row group of the used columns through the same
filesystem the fit reads from (a native file locally, an uncached s3fs file remotely):
the ceiling a fit can reach. Each figure is the median of ``--repeats`` runs. Target: the
S3 fit at least 0.7 x the local fit. Writes benchmarks/out/remote.json.

    .venv/bin/python benchmarks/remote.py            # ~1-2 minutes
    .venv/bin/python benchmarks/remote.py --rows 200000 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import provenance  # benchmarks/ is on sys.path when a script there runs

HERE = Path(__file__).resolve().parent
STREAMSGD = os.path.join(os.path.dirname(sys.executable), "streamsgd")


class MotoServer:
    """moto_server on a free loopback port; its request log is drained so it never blocks."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:  # werkzeug announces the address once it listens
            if "Running on" in line:
                break
        else:
            raise RuntimeError("moto_server exited before listening")
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    @property
    def options(self) -> dict[str, str]:
        return {"endpoint_url": self.url, "key": "bench", "secret": "bench"}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--row-group-rows", type=int, default=65536)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "out" / "remote.json"))
    return p.parse_args(argv)


def fit_rate(data: str, extra: list[str], epochs: int, out_dir: str) -> float:
    """rows/s of one ``streamsgd fit`` (the trainer's own figure: training passes only)."""
    proc = subprocess.run([STREAMSGD, "fit", data, *extra, "--model", "logistic", "--epochs", str(epochs),
                           "--json", "-o", os.path.join(out_dir, "m.npz")], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return float(json.loads(proc.stdout)["rows_per_second"])


def read_rate(open_file, columns: list[str]) -> float:
    """rows/s of decoding every row group's ``columns`` through ``open_file()``."""
    with open_file() as f:
        meta = pq.read_metadata(f)
    start = time.perf_counter()
    for g in range(meta.num_row_groups):
        with open_file() as f:
            pq.ParquetFile(f, metadata=meta, pre_buffer=False).read_row_group(g, columns=columns, use_threads=False)
    return meta.num_rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import s3fs

    from streamsgd.tools.generate import generate

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "data.parquet")
        generate(local, rows=args.rows, features=args.features, task="logistic", seed=0,
                 row_group_rows=args.row_group_rows)
        server = MotoServer()
        try:
            fs = s3fs.S3FileSystem(**server.options, skip_instance_cache=True)
            fs.mkdir("bench")
            fs.put(local, "bench/data.parquet")
            url = "s3://bench/data.parquet"
            s3_args = [a for k, v in server.options.items() for a in ("--storage-option", f"{k}={v}")]
            columns = [f"x{j}" for j in range(args.features)] + ["y"]
            runs: dict[str, list[float]] = {"fit_local": [], "fit_s3": [], "read_local": [], "read_s3": []}
            for _ in range(args.repeats):
                runs["fit_local"].append(fit_rate(local, [], args.epochs, tmp))
                runs["fit_s3"].append(fit_rate(url, s3_args, args.epochs, tmp))
                runs["read_local"].append(read_rate(lambda: pa.OSFile(local), columns))
                runs["read_s3"].append(read_rate(lambda: fs.open("bench/data.parquet", "rb", cache_type="none"),
                                                 columns))
        finally:
            server.close()
        size = os.path.getsize(local)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "rows": args.rows, "features": args.features, "row_group_rows": args.row_group_rows,
        "epochs": args.epochs, "repeats": args.repeats, "file_bytes": size,
        "rows_per_second": medians, "runs": runs,
        "s3_over_local_fit": medians["fit_s3"] / medians["fit_local"],
        "seconds": time.perf_counter() - started,
        "machine": provenance.machine(numpy=np.__version__, pyarrow=pa.__version__, s3fs=s3fs.__version__),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, value in medians.items():
        print(f"{name:>11}  {value:>12,.0f} rows/s")
    print(f"s3 fit / local fit = {result['s3_over_local_fit']:.2f} (target >= 0.7); {result['seconds']:.0f} s "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
