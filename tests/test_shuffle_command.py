"""``streamsgd shuffle``: the external shuffle writes a uniform permutation of every row and
column, in fixed memory, and an interrupted run reruns to the same output (DESIGN.md §9)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import invoke

#: Share of label-1 rows in the sorted tables: adjacent rows of a uniform permutation
#: differ in label with probability 2 n0 n1 / (N (N - 1)) ~ 2p(1 - p) = 0.42.
P = 0.3

#: The limit of the shared shuffle and of the killed one.
LIMIT = "12MB"


def sorted_table(rows: int, seed: int = 0) -> pa.Table:
    """Rows sorted by label, with an id, floats, a string column and nulls in two types."""
    rng = np.random.default_rng(seed)
    label = (np.arange(rows) >= rows * (1 - P)).astype(np.int8)  # all 0s, then all 1s
    words = np.array(["alpha", "beta", "gamma", "délta", ""], dtype=object)[rng.integers(0, 5, rows)]
    text = pa.array(words, pa.string(), mask=rng.random(rows) < 0.1)
    score = pa.array(rng.standard_normal(rows), mask=rng.random(rows) < 0.05)
    columns = {"id": np.arange(rows, dtype=np.int64), "label": label, "text": text, "score": score}
    columns.update({f"x{j}": rng.standard_normal(rows) for j in range(4)})
    return pa.table(columns)


def write_sorted(path, rows: int, row_group_size: int = 5000) -> str:
    pq.write_table(sorted_table(rows), str(path), row_group_size=row_group_size)
    return str(path)


def read_output(out) -> pa.Table:
    """The parts in name order, as one table (the shuffled order)."""
    names = sorted(n for n in os.listdir(out) if n.startswith("part-"))
    return pa.concat_tables([pq.read_table(os.path.join(out, n)) for n in names])


def checksum(table: pa.Table) -> int:
    """Order-independent: the sum (mod 2**64) of a hash of every row, over all columns,
    nulls and strings included."""
    return int(pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy(np.uint64).sum())


def shuffle_cli(data, out, *extra) -> None:
    result = invoke(["shuffle", str(data), "-o", str(out), *map(str, extra)])
    assert result.code == 0, result.report()
    assert not result.leaks, result.report()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """300,000 label-sorted rows (17 MB by the footers) and their shuffle at a 12 MB limit
    (5 buckets: the limit also pays for an open writer per bucket and the reader's pages)."""
    folder = tmp_path_factory.mktemp("shuffle")
    data = write_sorted(folder / "sorted.parquet", 300_000)
    out = folder / "out"
    shuffle_cli(data, out, "--memory-limit", LIMIT, "--seed", 7, "--quiet")
    return data, out


def test_the_output_is_a_permutation_of_every_row_and_column(small):
    data, out = small
    before, after = pq.read_table(data), read_output(out)
    assert after.schema == before.schema
    assert after.num_rows == before.num_rows
    assert checksum(after) == checksum(before)
    assert after.sort_by("id").equals(before)  # nulls and strings survive, row by row
    manifest = pd.read_json(os.path.join(out, "_manifest.json"), typ="series")
    assert manifest["rows"] == before.num_rows and manifest["seed"] == 7 and manifest["buckets"] >= 3
    assert sorted(os.listdir(out)) == ["_manifest.json"] + [f["name"] for f in manifest["files"]]


def test_label_sorted_rows_come_out_mixed(small):
    """Adjacent labels differ at the rate of a uniform permutation: 2p(1-p) = 0.42, whose
    standard deviation over 300,000 pairs is about 0.001, so 0.005 is five of them; and
    every part holds both labels in the input's proportion (the buckets mix, not just the
    order within them)."""
    _, out = small
    label = read_output(out)["label"].to_numpy()
    changes = np.mean(label[1:] != label[:-1])
    n1 = label.sum()
    expected = 2 * n1 * (len(label) - n1) / (len(label) * (len(label) - 1))
    assert abs(changes - expected) < 0.005, changes
    for name in sorted(n for n in os.listdir(out) if n.startswith("part-")):
        part = pq.read_table(os.path.join(out, name))["label"].to_numpy()
        sd = np.sqrt(P * (1 - P) / len(part))
        assert abs(part.mean() - P) < 5 * sd, (name, part.mean())


@pytest.mark.parametrize("limit", [LIMIT, "512MiB"])
def test_fit_reads_the_parts_whole_row_groups_plain_encoded(small, limit):
    """``info`` (fit's own cut of the data for its limit) reads every output row group
    whole, at the shuffle's limit and at the default one: none is sliced, which would read
    slower; numbers are plain-encoded (a dictionary of random floats only slows decoding),
    strings keep their dictionary."""
    _, out = small
    result = invoke(["info", str(out), "--target", "label", "--features", "id,score,x0,x1,x2,x3",
                     "--memory-limit", limit, "--json"])
    assert result.code == 0, result.report()
    layout = json.loads(result.stdout)
    assert layout["sliced_row_groups"] == 0, layout
    assert layout["row_groups"] >= 2 * layout["files"]  # 60,000 rows a part: several groups at 12 MB
    meta = pq.read_metadata(os.path.join(out, "part-00000.parquet"))
    for group in range(meta.num_row_groups):
        for j in range(meta.num_columns):
            column = meta.row_group(group).column(j)
            assert column.compression == "SNAPPY"
            assert ("RLE_DICTIONARY" in column.encodings) == (column.path_in_schema == "text"), column


def test_the_same_seed_gives_the_same_output_and_another_seed_another(small, tmp_path):
    data, out = small
    shuffle_cli(data, tmp_path / "again", "--memory-limit", LIMIT, "--seed", 7, "--quiet")
    shuffle_cli(data, tmp_path / "other", "--memory-limit", LIMIT, "--seed", 8, "--quiet")
    first, again, other = read_output(out), read_output(tmp_path / "again"), read_output(tmp_path / "other")
    assert again.equals(first)
    assert not np.array_equal(other["id"].to_numpy(), first["id"].to_numpy())
    assert checksum(other) == checksum(first)


def test_rerunning_a_finished_shuffle_is_a_no_op(small):
    data, out = small
    stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
    result = invoke(["shuffle", data, "-o", str(out), "--memory-limit", LIMIT, "--seed", "7"])
    assert result.code == 0 and "already shuffled" in result.stderr, result.report()
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == stamps


def test_a_folder_of_another_shuffle_is_refused(small):
    data, out = small
    result = invoke(["shuffle", data, "-o", str(out), "--memory-limit", LIMIT, "--seed", "9"])
    assert result.code == 2, result.report()
    assert re.fullmatch(r"streamsgd: error: -o .*: holds a finished shuffle of other data, or with another "
                        r"--seed or --memory-limit; delete it or choose another folder\n", result.stderr)


@pytest.mark.parametrize("case, code, message", [
    ("foreign", 2, r"-o .*: the folder holds 'notes\.txt', which no shuffle wrote; give an empty or new folder"),
    ("missing", 4, r".*nothing\.parquet: no such file or directory"),
    ("csv", 3, r".*rows\.csv: streamsgd reads Parquet or Zarr, not CSV; convert it once with: .*"),
    ("tiny", 2, r"--memory-limit 10000 bytes is too small to shuffle \d+ bytes in \d+ buckets; "
                r"give at least --memory-limit \d+"),
    ("schemas", 3, r".*b\.parquet: its columns \(.*\) differ from .*a\.parquet's \(.*\); "
                   r"shuffle files of one schema together"),
])
def test_errors_are_one_line_with_the_fix(tmp_path, case, code, message):
    data = write_sorted(tmp_path / "a.parquet", 2000, row_group_size=500)
    args = [data]
    out = tmp_path / "out"
    if case == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "missing":
        args = [str(tmp_path / "nothing.parquet")]
    elif case == "csv":
        args = [str(tmp_path / "rows.csv")]
    elif case == "schemas":
        pq.write_table(sorted_table(100).drop_columns(["text"]), str(tmp_path / "b.parquet"))
        args = [data, str(tmp_path / "b.parquet")]
    limit = "10000" if case == "tiny" else LIMIT
    result = invoke(["shuffle", *args, "-o", str(out), "--memory-limit", limit])
    assert result.code == code, result.report()
    assert re.fullmatch(f"streamsgd: error: {message}\n", result.stderr), result.report()
    if case != "foreign":
        assert not out.exists()  # refused before the output folder is made
    if case == "tiny":  # the limit the message names works
        named = re.search(r"give at least --memory-limit (\d+)", result.stderr).group(1)
        shuffle_cli(data, out, "--memory-limit", named, "--quiet")
        assert read_output(out).num_rows == 2000


def test_hive_partition_folders_become_string_columns(tmp_path):
    for day, rows in (("1", 300), ("2", 200)):
        (tmp_path / "data" / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"id": np.arange(rows) + 1000 * int(day)}),
                       str(tmp_path / "data" / f"day={day}" / "p.parquet"))
    shuffle_cli(tmp_path / "data", tmp_path / "out", "--quiet")
    table = read_output(tmp_path / "out")
    assert table.schema.names == ["id", "day"] and table.schema.field("day").type == pa.string()
    ids, days = table["id"].to_numpy(), table["day"].to_pylist()
    assert sorted(ids) == sorted(list(range(1000, 1300)) + list(range(2000, 2200)))
    assert all(str(i // 1000) == d for i, d in zip(ids, days))


#: A progress report of the stage with at least one unit done: the plain lines
#: (``permute: 3/13 buckets``) or a tqdm bar (``permute:  23%|##  | 3/13``).
def progressed(stage: str) -> re.Pattern:
    return re.compile(rf"{stage}:[^\r\n]*?(?<![\d.])[1-9][\d.]*[kM]?/".encode())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["scatter", "permute"])
def test_a_killed_run_reruns_to_the_uninterrupted_output(tmp_path, stage):
    """SIGKILL once the stage has reported progress (read from its stderr, no sleeps):
    the rerun finishes with the very output of an uninterrupted run, and nothing else is
    left in the folder."""
    data = write_sorted(tmp_path / "sorted.parquet", 300_000)
    common = ["--memory-limit", LIMIT, "--seed", "11"]
    shuffle_cli(data, tmp_path / "reference", *common, "--quiet")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "streamsgd", "shuffle", data, "-o", str(out), *common],
                            stderr=subprocess.PIPE, env={**os.environ, "TQDM_MININTERVAL": "0"})
    seen = b""
    while not progressed(stage).search(seen):
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the run ended before {stage} progressed: {seen.decode()}"
        seen += chunk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "_manifest.json").exists()  # killed mid-way, not after the end
    assert (out / "_shuffle" / "state.json").exists() == (stage == "permute")

    shuffle_cli(data, out, *common, "--quiet")
    assert read_output(out).equals(read_output(tmp_path / "reference"))
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "reference"))


def test_an_interrupted_run_with_buckets_of_another_format_starts_over(small, tmp_path, monkeypatch):
    """A scatter finished by a version that wrote its buckets otherwise (Parquet files, no
    ``bucket_format`` in state.json) is not continued from files this one cannot read: the
    rerun scatters again and ends with the uninterrupted output."""
    from streamsgd.tools import shuffle as module

    data, reference = small
    out = tmp_path / "out"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(module, "_permute", interrupted)
        with pytest.raises(KeyboardInterrupt):
            module.shuffle([data], str(out), memory_limit=12_000_000, seed=7)
    state_path = out / "_shuffle" / "state.json"
    state = json.loads(state_path.read_text())
    assert state.pop("bucket_format") == "arrow-ipc-stream"
    state_path.write_text(json.dumps(state))
    for bucket in (out / "_shuffle").glob("bucket-*"):
        bucket.rename(bucket.with_suffix(".parquet"))
    shuffle_cli(data, out, "--memory-limit", LIMIT, "--seed", 7, "--quiet")
    assert read_output(out).equals(read_output(reference))
    assert sorted(os.listdir(out)) == sorted(os.listdir(reference))


@pytest.mark.s3
def test_a_remote_destination(s3_server, tmp_path):
    """Parts and manifest on the loopback S3 server, the same rows as a local shuffle
    with the same seed and limit, and no bucket files left behind."""
    data = write_sorted(tmp_path / "sorted.parquet", 20_000)
    url = f"s3://data/{uuid.uuid4().hex}/shuffled"
    store = [f"--storage-option={k}={v}" for k, v in s3_server.storage_options.items()]
    result = invoke(["shuffle", data, "-o", url, "--memory-limit", "16MB", "--seed", "3", "--quiet", *store])
    assert result.code == 0, result.report()
    shuffle_cli(data, tmp_path / "local", "--memory-limit", "16MB", "--seed", "3", "--quiet")
    fs = s3_server.filesystem()
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(url.removeprefix("s3://"), detail=False))
    assert names == sorted(os.listdir(tmp_path / "local"))
    parts = [n for n in names if n.startswith("part-")]
    remote = pa.concat_tables([pq.read_table(fs.open(f"{url}/{n}", "rb")) for n in parts])
    assert remote.equals(read_output(tmp_path / "local"))
    assert checksum(remote) == checksum(pq.read_table(data))
    again = invoke(["shuffle", data, "-o", url, "--memory-limit", "16MB", "--seed", "3", "--quiet", *store])
    assert again.code == 0 and "already shuffled" in again.stderr, again.report()


#: What the measuring child runs: a shuffle, then its own peak RSS on stdout. VmHWM is the
#: high-water mark of this process image's memory; ``ru_maxrss`` is not: Linux carries it
#: across fork and exec, so a child reports the parent's peak when that is higher.
CHILD = """
import sys
from streamsgd.tools.shuffle import shuffle
shuffle([sys.argv[1]], sys.argv[2], memory_limit=int(sys.argv[3]), seed=1)
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")))
"""


def peak_rss(data, out, limit: int) -> int:
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}  # as the CLI sets it
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), str(limit)], capture_output=True,
                          text=True, env=env, check=True)
    return int(proc.stdout.split()[-1])


@pytest.mark.slow
def test_peak_rss_stays_within_the_limit_plus_the_idle_footprint(tmp_path):
    """A file nearly four times the limit: the peak above a shuffle of a tiny file (the
    idle footprint: interpreter, pyarrow, numpy) stays under the limit (measured: 42-44 MiB
    at 64 MiB). Smaller limits are dominated by fixed costs the plan charges (a page per
    column being read, an open writer per bucket), which need a file this large to show."""
    limit = 64 << 20
    rows = 3_000_000  # 8 float64 columns: 240 MB by the footers
    rng = np.random.default_rng(0)
    table = pa.table({f"x{j}": rng.standard_normal(rows) for j in range(8)})
    pq.write_table(table, str(tmp_path / "big.parquet"), row_group_size=100_000)
    pq.write_table(table.slice(0, 1000), str(tmp_path / "tiny.parquet"))
    del table
    idle = peak_rss(tmp_path / "tiny.parquet", tmp_path / "idle", limit)
    peak = peak_rss(tmp_path / "big.parquet", tmp_path / "out", limit)
    assert read_output(tmp_path / "out").num_rows == rows
    assert peak - idle <= limit, (peak - idle) / 2**20
