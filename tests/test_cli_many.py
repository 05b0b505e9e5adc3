"""ldm-txt2img --from-file in two processes under torchrun (what `accelerate launch --multi_gpu` runs), with the
built-in model: the same images as one process, each job once, a killed run finished by --skip-existing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import needs_proc

from ldm.cli.txt2img import main

LINES = [
    "a large red circle at the top left on a white background",
    '--prompt a small blue triangle at the top left --negative_prompt "a red square" --steps 5',
    "a large yellow square at the bottom right on a light grey background",
    '--prompt "a green circle in the middle" --cfg_scale 5 --sampler_name "Euler a"',
    "a small red square at the top right on a white background",
    "--prompt a large blue circle at the bottom left --seed 77",
]
NAMES = [f"job-{j:05d}-{seed}.png" for j, seed in enumerate([10, 11, 12, 13, 14, 77])]
# torchrun gives each of its processes one thread; one process is given one too: a CPU's float sums depend on
# the thread count (a pixel value in a few thousand off by one), never on the split.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


def command(prompts, outdir, *options) -> list[str]:
    return ["-m", "ldm.cli.txt2img", "--from-file", str(prompts), "--outdir", str(outdir), "--steps", "4", "--quiet",
            *options]  # fmt: skip


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **ONE_THREAD})


def images(outdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in outdir.glob("job-*.png")}


def manifest(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def printed(result: subprocess.CompletedProcess) -> list[str]:
    return [Path(line).name for line in result.stdout.split() if line.endswith(".png")]


@pytest.fixture(scope="module")
def one_process(prompts, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("one")
    result = run([sys.executable, *command(prompts, outdir, "--seed", "10")])
    assert result.returncode == 0, result.stderr
    assert sorted(printed(result)) == NAMES
    return images(outdir)


def test_two_processes_make_the_images_of_one_and_list_each_job_once(prompts, one_process, tmp_path):
    result = run(torchrun(*command(prompts, tmp_path, "--seed", "10")))
    assert result.returncode == 0, result.stderr
    assert images(tmp_path) == one_process
    records = manifest(tmp_path)
    assert [(r["job"], r["file"], r["status"]) for r in records] == [(j, n, "done") for j, n in enumerate(NAMES)]
    assert [r["rank"] for r in records] == [0, 0, 0, 1, 1, 1]  # Accelerate's blocks
    assert "6 jobs: 6 made, 0 already there; 2 processes" in result.stderr


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The worker process of `rank` among torchrun's children (Linux /proc)."""
    for children in Path(f"/proc/{torchrun_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
    raise AssertionError(f"no worker of rank {rank}")


@needs_proc
def test_a_killed_run_is_finished_by_skip_existing_with_no_job_made_twice(prompts, one_process, tmp_path):
    with subprocess.Popen(torchrun(*command(prompts, tmp_path, "--seed", "10")), env={**os.environ, **ONE_THREAD},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as first:  # fmt: skip
        deadline = time.monotonic() + 240
        while not (tmp_path / NAMES[3]).exists():  # rank 1's first image
            assert first.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
            time.sleep(0.01)
        os.kill(rank_pid(first.pid, 1), signal.SIGKILL)
        assert first.wait(timeout=120) != 0  # torchrun stops the other process too
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.glob("job-*.png")}
    assert 1 <= len(before) < 6, before

    second = run(torchrun(*command(prompts, tmp_path, "--skip-existing")))  # the run's seed, 10, read back
    assert second.returncode == 0, second.stderr
    assert sorted(printed(second)) == sorted(set(NAMES) - set(before))
    assert all((tmp_path / n).stat().st_ino == ino and (tmp_path / n).stat().st_mtime_ns == t
               for n, (ino, t) in before.items())  # fmt: skip
    assert images(tmp_path) == one_process
    records = manifest(tmp_path)
    assert [(r["job"], r["status"]) for r in records] == [(j, "done") for j in range(6)]
    assert f"{len(before)} already there" in second.stderr


def test_two_processes_without_a_seed_share_one_drawn_seed(tmp_path):
    prompts = tmp_path / "same.txt"
    prompts.write_text("a large red circle at the top left on a white background\n" * 4)
    result = run(torchrun(*command(prompts, tmp_path / "out")))
    assert result.returncode == 0, result.stderr
    seeds = [r["seed"] for r in manifest(tmp_path / "out")]
    assert seeds == [seeds[0] + j for j in range(4)]
    made = images(tmp_path / "out")
    assert len(set(made.values())) == 4  # the same prompt, four different images


def test_a_script_that_started_torch_distributed_itself_can_call_generate_many(tmp_path):
    script = tmp_path / "own.py"
    script.write_text(
        "import sys\nimport torch.distributed as dist\nfrom ldm import Pipeline, generate_many\n"
        "dist.init_process_group('gloo')\n"  # as Accelerate's PartialState() does on GPUs (with NCCL)
        "summary = generate_many(lambda device: Pipeline.load(device=device), ['a red circle'] * 3, sys.argv[1],"
        " seed=5, progress=False)\n"
        "with open(f'{sys.argv[1]}-rank{dist.get_rank()}.txt', 'w') as f:\n"  # one file each: two processes'
        "    f.write(f'{summary.made} {dist.is_initialized()}')\n"  # prints to one stdout can interleave
    )
    result = run(torchrun(str(script), str(tmp_path / "out")))
    assert result.returncode == 0, result.stderr
    said = [(tmp_path / f"out-rank{rank}.txt").read_text() for rank in (0, 1)]
    assert said == ["3 True", "3 True"]
    assert sorted(images(tmp_path / "out")) == [f"job-{j:05d}-{5 + j}.png" for j in range(3)]


@pytest.mark.parametrize(
    ("lines", "options", "message"),
    [
        (["a", "--prompt b --restore_faces true"], [], "prompts.txt line 2: unknown setting 'restore_faces'"),
        (["a"], ["--preview", "approx"], "--preview shows one image"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_the_model_loads(tmp_path, capsys, lines, options, message):
    (tmp_path / "prompts.txt").write_text("\n".join(lines))
    assert main([*command(tmp_path / "prompts.txt", tmp_path / "out", *options)[2:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_skip_existing_goes_with_a_prompt_file(tmp_path, capsys):
    assert main(["--prompt", "a", "--skip-existing", "--outdir", str(tmp_path / "out")]) == 2
    assert "--skip-existing finishes a --from-file run" in capsys.readouterr().err


def test_a_used_folder_is_refused_without_skip_existing(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a\n")
    (tmp_path / "out" / ".ldm-jobs").mkdir(parents=True)
    (tmp_path / "out" / ".ldm-jobs" / "run.json").write_text('{"seed": 1, "jobs": 1}')
    assert main([*command(tmp_path / "prompts.txt", tmp_path / "out")[2:]]) == 2
    assert "already holds a run of 1 jobs; pass --skip-existing" in capsys.readouterr().err
