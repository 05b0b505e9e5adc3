"""Many jobs (ldm/jobs/): the split over processes, each job's seed, prompt files, and generate_many's records and
resuming, with a stand-in pipeline (no model). Many real processes: tests/test_cli_many.py."""

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState
from PIL import Image

from ldm import GenerationRequest, Result
from ldm.errors import ConfigError
from ldm.jobs.group import Group
from ldm.jobs.many import generate_many, job_seeds
from ldm.jobs.prompt_file import read_prompt_file
from ldm.jobs.records import RECORDS, image_name
from ldm.jobs.world import World, block

WORLD_SIZES = range(1, 9)
JOB_COUNTS = range(18)


def accelerates_block(count: int, rank: int, size: int) -> list[int]:
    """What Accelerate's split_between_processes gives process `rank` of `size` (its state faked: on a CPU, a
    real PartialState of this one process has one process)."""
    state = SimpleNamespace(num_processes=size, process_index=rank)
    with PartialState.split_between_processes(state, list(range(count))) as mine:
        return list(mine)


@pytest.mark.parametrize("size", WORLD_SIZES)
def test_each_process_takes_accelerates_block_and_the_blocks_cover_every_job_once(size):
    for count in JOB_COUNTS:
        blocks = [list(block(count, rank, size)) for rank in range(size)]
        assert blocks == [accelerates_block(count, rank, size) for rank in range(size)]
        assert sum(blocks, []) == list(range(count))


@pytest.mark.parametrize("size", WORLD_SIZES)
def test_a_job_has_the_same_seed_whichever_process_runs_it(size):
    for count in JOB_COUNTS:
        jobs = [{"prompt": "x", **({"seed": 3} if j == 5 else {})} for j in range(count)]
        seeds = job_seeds(jobs, 1000)
        by_process = {j: seeds[j] for rank in range(size) for j in World(rank, size).jobs(count)}
        assert by_process == {j: 3 if j == 5 else 1000 + j for j in range(count)}


def test_the_world_comes_from_torchruns_variables():
    assert World.from_environment({}) == World(0, 1, 0)
    assert World.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}):
        with pytest.raises(ConfigError, match="torchrun"):
            World.from_environment(bad)


def test_many_processes_without_torchruns_address_are_refused(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR/MASTER_PORT are not set; start the processes with torchrun"):
        Group(World(0, 2))


def test_each_process_has_its_own_gpu_unless_a_device_is_named():
    assert World(0, 1, 0).device(None, cuda_available=True) is None  # one process: the pipeline's own choice
    assert World(3, 4, 1).device(None, cuda_available=True) == "cuda:1"
    assert World(3, 4, 1).device(None, cuda_available=False) == "cpu"
    assert World(3, 4, 1).device("cuda", cuda_available=True) == "cuda:1"
    assert World(3, 4, 1).device("cuda:0", cuda_available=True) == "cuda:0"


def test_a_text_file_reads_as_a1111s_prompts_from_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "a red circle\n\n"
        '--prompt a blue square, at night --negative_prompt "blur, noise" --steps 30 --cfg_scale 6.5\n'
        '--prompt "a cat -- sitting" --sampler_name "DPM++ 2M Karras" --seed 7 --n_iter 2 --batch_size 2\n'
        "--prompt x --sampler euler_a --width 128 --karras false\n"
    )
    assert read_prompt_file(path) == [
        {"prompt": "a red circle"},
        {"prompt": "a blue square, at night", "negative_prompt": "blur, noise", "steps": 30, "guidance": 6.5},
        *({"prompt": "a cat -- sitting", "sampler": "dpmpp_2m", "karras": True, "seed": 7 + i} for i in range(4)),
        {"prompt": "x", "sampler": "euler_a", "width": 128, "karras": False},
    ]
    assert read_prompt_file(path, batch_size=2)[:2] == [{"prompt": "a red circle"}] * 2


def test_jsonl_and_csv_files_give_a_column_per_setting(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "seed": 4, "cfg_scale": 5}\n\n{"prompt": "b", "seed": null}\n')
    assert read_prompt_file(tmp_path / "p.jsonl") == [{"prompt": "a", "seed": 4, "guidance": 5.0}, {"prompt": "b"}]
    (tmp_path / "p.csv").write_text('prompt,Negative prompt,seed,steps\n"a, b",blur,3,\nc,,,12\n')
    assert read_prompt_file(tmp_path / "p.csv") == [
        {"prompt": "a, b", "negative_prompt": "blur", "seed": 3}, {"prompt": "c", "steps": 12}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.txt", "a\n--prompt b --styles x\n", "p.txt line 2: unknown setting 'styles'"),
        ("p.txt", "--prompt b --steps many\n", "p.txt line 1: .*'many'"),
        ("p.txt", '--prompt "b --steps 3\n', "p.txt line 1: .*quotation"),
        ("p.txt", "--prompt b --sampler_name Euler-ish\n", "p.txt line 1: sampler 'Euler-ish' is not one ldm has"),
        ("p.txt", "--steps 3\n", "p.txt line 1: no prompt"),
        ("p.jsonl", '{"prompt": "a"}\n["b"]\n', "p.jsonl line 2 is not a JSON object"),
        ("p.jsonl", '{"prompt": "a", "seed": 1.5}\n', "p.jsonl line 1: 1.5 is not a whole number"),
        ("p.csv", "prompt,seed\na,1,2\n", "p.csv line 2 has more cells"),
        ("p.csv", "prompt,seed\na,1\n,2\n", "p.csv line 3: no prompt"),
        ("p.yaml", "prompt: a\n", "a prompt file is .txt, .jsonl, .csv"),
    ],
)
def test_a_bad_prompt_file_names_its_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_prompt_file(tmp_path / name)


class StandIn:
    """A pipeline that draws a flat colour from the seed, and fails on the prompt "fail"."""

    def __init__(self):
        self.seeds: list[int] = []

    def request(self, **settings):
        return GenerationRequest(**settings)

    def generate(self, request, progress=False):
        if request.prompt == "fail":
            raise ConfigError("this job cannot be made")
        self.seeds.append(request.seed)
        image = Image.new("RGB", (8, 8), (request.seed % 256, 0, 0))
        return Result([image], [request.seed], [request.to_infotext()], torch.zeros(1, 4, 1, 1), request)


def manifest(outdir):
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def test_a_failed_job_is_recorded_and_a_rerun_makes_only_what_is_missing(tmp_path):
    jobs = ["a", {"prompt": "fail"}, {"prompt": "c", "seed": 99}, "d"]
    first = StandIn()
    summary = generate_many(lambda device: first, jobs, tmp_path, seed=10, world=World())
    assert (summary.jobs, summary.made, summary.skipped, summary.failed) == (4, 3, 0, (1,))
    assert first.seeds == [10, 99, 13]
    records = manifest(tmp_path)
    assert [(r["job"], r["seed"], r["status"]) for r in records] == [
        (0, 10, "done"), (1, 11, "failed"), (2, 99, "done"), (3, 13, "done")
    ]  # fmt: skip
    assert records[1]["error"] == "this job cannot be made" and records[0]["file"] == image_name(0, 10)
    assert GenerationRequest.from_infotext(Image.open(tmp_path / "job-00002-99.png").text["parameters"]).seed == 99

    with pytest.raises(ConfigError, match="--skip-existing"):
        generate_many(lambda device: StandIn(), jobs, tmp_path, seed=10, world=World())
    with pytest.raises(ConfigError, match="used seed 10"):
        generate_many(lambda device: StandIn(), jobs, tmp_path, seed=11, skip_existing=True, world=World())
    (tmp_path / RECORDS / "00003.json").unlink()  # as if its process stopped between the image and the record
    second = StandIn()
    jobs[1] = "b"
    summary = generate_many(lambda device: second, jobs, tmp_path, skip_existing=True, world=World())
    assert second.seeds == [11]  # the run's seed again, without being told
    assert (summary.made, summary.skipped, summary.failed) == (1, 3, ())
    assert [(r["job"], r["status"]) for r in manifest(tmp_path)] == [(j, "done") for j in range(4)]
    assert manifest(tmp_path)[3]["settings"]["prompt"] == "d"  # read back from the PNG


def test_nothing_left_to_make_loads_no_pipeline_and_a_bad_job_is_refused_first(tmp_path):
    def no_pipeline(device):
        raise AssertionError("loaded a pipeline for no jobs")

    assert generate_many(no_pipeline, [], tmp_path / "none", world=World()).jobs == 0
    generate_many(lambda device: StandIn(), ["a", "b"], tmp_path / "done", world=World())
    (tmp_path / "done" / "manifest.jsonl").unlink()  # e.g. a folder merged from machines that each wrote their own
    summary = generate_many(no_pipeline, ["a", "b"], tmp_path / "done", skip_existing=True, world=World())
    assert (summary.made, summary.skipped) == (0, 2) and len(manifest(tmp_path / "done")) == 2
    with pytest.raises(ConfigError, match="job 1: unknown setting 'batch_size'"):
        generate_many(no_pipeline, ["a", {"prompt": "b", "batch_size": 2}], tmp_path / "bad", world=World())
    assert not (tmp_path / "bad").exists()


def test_an_image_name_that_is_taken_is_a_failure_not_an_overwrite(tmp_path):
    (tmp_path / image_name(0, 5)).write_bytes(b"someone else's")
    summary = generate_many(lambda device: StandIn(), ["a"], tmp_path, seed=5, world=World())
    assert summary.failed == (0,) and (tmp_path / image_name(0, 5)).read_bytes() == b"someone else's"
    assert "already exists" in manifest(tmp_path)[0]["error"]
