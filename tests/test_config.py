"""Suite files -> RunSpecs: the built-in suites, per-file validation errors (file:line), selection, digests."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from unipt_bench.config import MODES, RunSpec
from unipt_bench.errors import UserError
from unipt_bench.suite_file import SuiteReader, builtin_suites, load_suite, select_methods

MARK = "# <-"  # marks the line an error must point at (line_of ignores comments, so the marker is inert)


@pytest.fixture(scope="module")
def suites():
    """Every built-in suite, loaded once (flickr30k builds paper-scale backbones on the meta device)."""
    return {name: load_suite(name) for name in builtin_suites()}


@pytest.fixture(scope="module")
def flickr(suites):
    return suites["flickr30k"]


def by_run(specs):
    return {(s.config, s.label): s for s in specs}


# ---------------------------------------------------------------- built-in suites


def test_every_suite_file_is_builtin():
    """The suites/ folder holds smoke and flickr30k, each keyed by its file stem."""
    found = builtin_suites()
    assert {"smoke", "flickr30k"} <= set(found)
    for name, path in found.items():
        assert path.stem == name and path.suffix == ".toml"


@pytest.mark.parametrize("mode", MODES)
def test_builtin_suites_expand_to_specs_with_the_mode(suites, mode):
    """Each suite expands to unique RunSpecs that carry the requested mode and their suite's name."""
    for name, suite in suites.items():
        specs = suite.with_mode(mode)
        assert specs, name
        assert suite.name == name
        assert {s.mode for s in specs} == {mode}
        assert {s.suite for s in specs} == {name}
        assert len({s.key for s in specs}) == len(specs)
        assert [s.order for s in specs] == list(range(len(specs)))


def test_builtin_suites_list_every_method_of_their_file(suites):
    """Every methods entry of every [[configs]] table becomes exactly one spec, in file order."""
    for name, suite in suites.items():
        data = tomllib.loads(builtin_suites()[name].read_text(encoding="utf-8"))
        expected = [
            (c["name"], m if isinstance(m, str) else m.get("label", m["method"]))
            for c in data["configs"]
            for m in c["methods"]
        ]
        assert [(s.config, s.label) for s in suite.specs] == expected


PAPER_METHODS = {"full", "partial", "bitfit", "adapter", "lora", "prompt", "lst", "unipt"}


BEYOND_PAPER = {"sherl", "res-tuning", "dtl", "e3va", "meft"}  # transformer-only methods published around UniPT


def test_flickr30k_configs_and_methods(flickr):
    """flickr30k mirrors the paper's tables: t5-bert runs all eight methods (and the methods beyond the paper,
    which apply to its BERT tower); every config runs full/partial/bitfit."""
    configs = {}
    for s in flickr.specs:
        configs.setdefault(s.config, []).append(s.method)
    assert list(configs) == ["t5-bert", "t5-bert-eager", "t5-resnext", "t1"]
    assert set(configs["t5-bert"]) == PAPER_METHODS | BEYOND_PAPER
    for methods in configs.values():
        assert {"full", "partial", "bitfit"} <= set(methods) <= PAPER_METHODS | BEYOND_PAPER
        assert len(set(methods)) == len(methods)


def test_flickr30k_towers_and_shapes(flickr):
    """Tower backbones, tuned flags and profiling shapes come from the suite file."""
    runs = by_run(flickr.specs)
    bert = runs[("t5-bert", "unipt")]
    assert [(t.name, t.backbone, t.tuned, t.shape) for t in bert.towers] == [
        ("image", "butd-regions", False, {"regions": 36}),
        ("text", "bert-base", True, {"seq_len": 32}),
    ]
    t1 = runs[("t1", "full")]
    assert [(t.backbone, t.tuned, t.shape) for t in t1.towers] == [
        ("resnext101-32x8d", True, {"image_size": 512}),
        ("bert-base", True, {"seq_len": 32}),
    ]
    assert bert.task_options == {"embed_dim": 1024, "pooling": "gpo"}
    assert bert.paper == "table5-bert"


@pytest.mark.parametrize("config", ["t5-resnext", "t1"])
def test_flickr30k_per_method_gpus_divide_the_batch(flickr, config):
    """full and bitfit run on 8 GPUs at 112 / 8 = 14 per device; partial on one GPU at 112."""
    runs = by_run(flickr.specs)
    for label in ("full", "bitfit"):
        assert (runs[(config, label)].batch, runs[(config, label)].gpus) == (14, 8)
    assert (runs[(config, "partial")].batch, runs[(config, "partial")].gpus) == (112, 1)


def test_flickr30k_batch_per_device_follows_each_methods_gpus(flickr):
    """Every run's per-device batch is the config's 112 split over the gpus its methods entry gives."""
    data = tomllib.loads(builtin_suites()["flickr30k"].read_text(encoding="utf-8"))
    runs = by_run(flickr.specs)
    for config in data["configs"]:
        for entry in config["methods"]:
            label = entry if isinstance(entry, str) else entry.get("label", entry["method"])
            gpus = 1 if isinstance(entry, str) else entry.get("gpus", config.get("gpus", 1))
            assert (runs[(config["name"], label)].batch, runs[(config["name"], label)].gpus) == (112 // gpus, gpus)


def test_flickr30k_t5_bert_runs_on_one_gpu(flickr):
    assert {(s.batch, s.gpus) for s in flickr.specs if s.config == "t5-bert"} == {(112, 1)}


# ---------------------------------------------------------------- bad suite files

TOWERS = """\
    { name = "text", backbone = "tiny-bert", seq_len = 12 },
    { name = "image", backbone = "tiny-regions", tuned = false },
"""


def suite_text(top: str = "", config: str = "", towers: str = TOWERS, methods: str = 'methods = ["unipt"]') -> str:
    """A small valid suite; each argument replaces or adds one part (mark the bad line with MARK)."""
    return (
        f'name = "probe"\ntask_options = {{ embed_dim = 32 }}\n{top}\n'
        f'[[configs]]\nname = "only"\nbatch = 4\n{config}\ntowers = [\n{towers}]\n{methods}\n'
    )


def marked_line(text: str) -> int:
    (line,) = [n for n, t in enumerate(text.splitlines(), start=1) if t.rstrip().endswith(MARK)]
    return line


def read_error(tmp_path, text: str) -> tuple[str, str]:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        SuiteReader(path).read()
    return str(path), str(info.value)


def test_the_probe_suite_is_valid(tmp_path):
    """The template the error cases start from loads, so each error below comes from its one change."""
    path = tmp_path / "ok.toml"
    path.write_text(suite_text(methods='methods = ["unipt", { method = "lora", label = "lora-r4", rank = 4 }]'))
    suite = SuiteReader(path).read()
    assert [(s.config, s.label, s.method, s.method_options, s.batch) for s in suite.specs] == [
        ("only", "unipt", "unipt", {}, 4),
        ("only", "lora-r4", "lora", {"rank": 4}, 4),
    ]


BAD_SUITES = {
    "unknown top-level key": (suite_text(top=f'colour = "red"  {MARK}'), "unknown key 'colour' in the suite"),
    "unknown key in a config": (suite_text(config=f"bsize = 4  {MARK}"), "unknown key 'bsize' in a [[configs]] table"),
    "unknown key in a tower": (
        suite_text(towers=f'    {{ name = "text", backbone = "tiny-bert", seq_length = 12 }},  {MARK}\n'
                          '    { name = "image", backbone = "tiny-regions", tuned = false },\n'),
        "unknown key 'seq_length' in tower 'text'",
    ),
    "unknown method": (suite_text(methods=f'methods = ["unipt", "nosuch"]  {MARK}'), "unknown method 'nosuch'"),
    "unknown backbone": (
        suite_text(towers=f'    {{ name = "text", backbone = "tiny-bart" }},  {MARK}\n'
                          '    { name = "image", backbone = "tiny-regions", tuned = false },\n'),
        "unknown backbone 'tiny-bart'",
    ),
    "unknown method option": (
        suite_text(methods=f'methods = [{{ method = "unipt", rank = 3 }}]  {MARK}'),
        "unknown option(s) rank for method 'unipt'",
    ),
    "method option of the wrong type": (
        suite_text(methods=f'methods = [{{ method = "unipt", reduction = "two" }}]  {MARK}'),
        "option reduction must be a int, got 'two'",
    ),
    "tower shape of the wrong type": (
        suite_text(towers=f'    {{ name = "text", backbone = "tiny-bert", seq_len = 1.5 }},  {MARK}\n'
                          '    { name = "image", backbone = "tiny-regions", tuned = false },\n'),
        "seq_len must be a positive integer, got 1.5",
    ),
    "batch that does not split over gpus": (
        suite_text(methods=f'methods = [{{ method = "bitfit", gpus = 3 }}]  {MARK}'),
        "batch 4 does not split evenly over 3 GPUs",
    ),
    "duplicate labels": (
        suite_text(methods=f'methods = ["unipt", {{ method = "lora", label = "unipt" }}]  {MARK}'),
        "run only/unipt appears twice",
    ),
    "one tower for a two-tower task": (
        suite_text(towers='    { name = "text", backbone = "tiny-bert" },\n').replace(
            'name = "only"', f'name = "only"  {MARK}'
        ),
        "task 'retrieval' needs 2 towers, found 1",
    ),
    "label with illegal characters": (
        suite_text(methods=f'methods = [{{ method = "unipt", label = "unipt/r4" }}]  {MARK}'),
        "label 'unipt/r4' may hold only letters, digits and _ . + -",
    ),
    "suite name with illegal characters": (
        suite_text().replace('name = "probe"', f'name = "my probe"  {MARK}'),
        "name 'my probe' may hold only letters",
    ),
    "non-positive batch": (suite_text().replace("batch = 4", f"batch = 0  {MARK}"), "batch must be a positive integer"),
}


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_bad_suite_error_names_file_and_line(tmp_path, case):
    """Each mistake is a UserError that starts with `<file>:<line>:` pointing at the offending line."""
    text, expected = BAD_SUITES[case]
    path, message = read_error(tmp_path, text)
    assert message.startswith(f"{path}:{marked_line(text)}: "), message
    assert expected in message


def test_malformed_toml_names_file_and_line(tmp_path):
    """A TOML syntax error names the file and the parser's line."""
    text = suite_text().replace("[[configs]]", f"[[configs]  {MARK}")
    path, message = read_error(tmp_path, text)
    assert message.startswith(f"{path}: malformed TOML: ")
    assert f"line {marked_line(text)}" in message


def test_suite_without_configs_names_the_file(tmp_path):
    path, message = read_error(tmp_path, 'name = "probe"\n')
    assert message == f"{path}: the suite needs at least one [[configs]] table"


def test_config_level_gpus_must_divide_the_batch(tmp_path):
    """gpus set on the whole config applies to each method: 3 GPUs cannot share a batch of 4."""
    path, message = read_error(tmp_path, suite_text(config="gpus = 3"))
    assert message.startswith(f"{path}:")
    assert "batch 4 does not split evenly over 3 GPUs" in message


def test_line_points_at_the_config_that_is_wrong(tmp_path):
    """Two configs list bitfit; only the second one's gpus = 3 is wrong, so the line must be the second's."""
    first = suite_text(methods='methods = ["unipt", "bitfit"]')
    second = suite_text(methods=f'methods = ["unipt", {{ method = "bitfit", gpus = 3 }}]  {MARK}')
    second = second[second.index("[[configs]]"):].replace('name = "only"', 'name = "second"')
    text = first + second
    path, message = read_error(tmp_path, text)
    assert "config 'second': batch 4 does not split evenly over 3 GPUs" in message
    assert message.startswith(f"{path}:{marked_line(text)}: "), message


@pytest.mark.parametrize(
    "text",
    [
        suite_text(methods="methods = [{ method = 3 }]"),
        suite_text(config="task_options = 3"),
        suite_text(config="gpus = 0"),
        suite_text(config='gpus = "2"'),
        suite_text().replace("towers = [\n" + TOWERS + "]", "towers = 3"),
    ],
    ids=["method-int", "task_options-int", "config-gpus-0", "config-gpus-str", "towers-int"],
)
def test_values_of_the_wrong_type_are_user_errors(tmp_path, text):
    """A wrong value type is a user's mistake: a UserError naming the file, never a crash."""
    path, message = read_error(tmp_path, text)
    assert message.startswith(path)


# ---------------------------------------------------------------- select_methods


@pytest.fixture
def labelled(tmp_path):
    """unipt twice (default and a labelled variant) plus lora, in one config."""
    path = tmp_path / "labels.toml"
    path.write_text(suite_text(methods='methods = ["unipt", { method = "unipt", label = "unipt-r4", reduction = 4 }, "lora"]'))
    return SuiteReader(path).read().with_mode("estimate")


def test_select_methods_by_method_name(labelled):
    """A method name keeps every run of that method, whatever its label."""
    assert [s.label for s in select_methods(labelled, "unipt")] == ["unipt", "unipt-r4"]


def test_select_methods_by_label(labelled):
    assert [s.label for s in select_methods(labelled, "unipt-r4, lora")] == ["unipt-r4", "lora"]


@pytest.mark.parametrize("wanted", [None, ""])
def test_select_methods_without_a_filter_keeps_all(labelled, wanted):
    assert select_methods(labelled, wanted) == labelled


def test_select_methods_rejects_unknown_names(labelled):
    """Names not in the suite are a UserError that lists them and what the suite has."""
    with pytest.raises(UserError, match=r"--methods: nosuch, adapter not in this suite \(it has: lora, unipt, unipt-r4\)"):
        select_methods(labelled, "unipt,nosuch,adapter")


# ---------------------------------------------------------------- RunSpec digest and round trip


@pytest.mark.parametrize(
    "change",
    [{"batch": 8}, {"method_options": {"reduction": 4}}, {"mode": "cpu"}, {"gpus": 2}, {"steps": 3}],
    ids=lambda c: next(iter(c)),
)
def test_digest_changes_with_what_is_measured(spec_factory, change):
    spec = spec_factory("unipt")
    assert dataclasses.replace(spec, **change).digest() != spec.digest()


@pytest.mark.parametrize("change", [{"order": 7}, {"title": "another title"}], ids=lambda c: next(iter(c)))
def test_digest_ignores_display_fields(spec_factory, change):
    spec = spec_factory("unipt")
    assert dataclasses.replace(spec, **change).digest() == spec.digest()


def test_digest_is_stable_and_short(spec_factory):
    """Two equal specs built separately share a 16-hex-digit digest."""
    digest = spec_factory("unipt").digest()
    assert digest == spec_factory("unipt").digest()
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_spec_round_trips_through_dict(spec_factory):
    spec = spec_factory("lora", options={"rank": 4}, shape={"seq_len": 12})
    again = RunSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.digest() == spec.digest()
    assert again.towers[0].shape == {"seq_len": 12}


def test_builtin_specs_round_trip(suites):
    for spec in suites["smoke"].with_mode("estimate"):
        assert RunSpec.from_dict(spec.to_dict()) == spec
