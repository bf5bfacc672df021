"""infra/ against the code it deploys: no network, no Docker, no Terraform binary.

- the Flex Template parameters (infra/metadata.json) are generated from imgsim run's flags (less those
  declared template=False, each with its reason), and templates' spellings reach imgsim;
- the images (infra/Dockerfile, infra/Dockerfile.gpu) use the Beam version of setup.py and
  constraints.txt, a dated launcher base, copy every package setup.py installs, and launch main.py;
- the Terraform parses, has the resources and least-privilege bindings the runbook describes, and its
  scheduler posts a launch body that renders to valid JSON naming the template, input and output.
"""
from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
TERRAFORM = INFRA / "terraform"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
TEMPLATE_PATH_SUFFIX = "templates/imgsim.json"
REQUIRED_PARAMETERS = {"input", "output"}
METADATA_KEYS = {"name", "label", "helpText", "isOptional", "regexes"}  # the documented ones


# --- helpers -------------------------------------------------------------------------------------

def load_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def metadata() -> dict:
    return load_json(INFRA / "metadata.json")


def parameters() -> dict[str, dict]:
    return {p["name"]: p for p in metadata()["parameters"]}


def run_flags() -> dict:
    """imgsim run's declared flags by name (imgsim.config.flags.DeclaredFlag)."""
    from imgsim.config.flags import declared_flags
    from imgsim.config.options import RunOptions

    return {d.name: d for d in declared_flags(RunOptions)}


def setup_py() -> tuple[str, dict]:
    """(BEAM_VERSION, the literal keyword arguments of setup()) without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    beam = None
    kwargs = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BEAM_VERSION" for t in node.targets):
            beam = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                try:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    pass  # e.g. extras_require, built with an f-string
    assert beam, "setup.py defines no BEAM_VERSION"
    return beam, kwargs


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def dockerfile(name: str) -> dict:
    """The instructions this project uses: ARG defaults (before and after FROM), FROM, WORKDIR,
    ENV, COPY sources, RUN commands and ENTRYPOINT; line continuations joined, comments dropped."""
    lines, current = [], ""
    for raw in (INFRA / name).read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    doc = {"args": {}, "from": [], "workdir": None, "env": {}, "copy": [], "copy_from": [], "run": [],
           "entrypoint": None, "cmd": None, "user": None}
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            doc["args"][key] = value.strip().strip('"')
        elif instruction == "FROM":
            doc["from"].append(re.sub(r"\$\{(\w+)\}", lambda m: doc["args"][m.group(1)], rest.split()[0]))
        elif instruction == "WORKDIR":
            doc["workdir"] = rest
        elif instruction == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest) if "=" in rest.split()[0] else \
                    [re.split(r" ", rest, maxsplit=1)]:
                doc["env"][key] = value.strip().strip('"')
        elif instruction == "CMD":
            doc["cmd"] = rest
        elif instruction == "USER":
            doc["user"] = rest
        elif instruction == "COPY":
            words = rest.split()
            if words[0].startswith("--from="):
                doc["copy_from"].append((words[0][len("--from="):], words[1], words[2]))
            else:
                doc["copy"].append((words[:-1], words[-1]))
        elif instruction == "RUN":
            doc["run"].append(rest)
        elif instruction == "ENTRYPOINT":
            doc["entrypoint"] = json.loads(rest)
    return doc


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _clean(node):
    """python-hcl2's output without its bookkeeping keys and with string quotes removed."""
    if isinstance(node, dict):
        return {_unquote(k): _clean(v) for k, v in node.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return _unquote(node)


def terraform() -> dict:
    """Every *.tf parsed: {"resource": {(type, name): body}, "variable": {...}, "locals": {...}, ...}."""
    import hcl2

    merged = {"resource": {}, "variable": {}, "locals": {}, "output": {}}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with open(path, encoding="utf-8") as f:
            doc = _clean(hcl2.load(f))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    merged["resource"][(rtype, name)] = body
        for key in ("variable", "output"):
            for block in doc.get(key, []):
                merged[key].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
    return merged


def resources_of(tf: dict, rtype: str) -> dict[str, dict]:
    return {name: body for (t, name), body in tf["resource"].items() if t == rtype}


def block(body: dict, name: str) -> dict:
    value = body[name]
    return value[0] if isinstance(value, list) else value


SAMPLE_VARS = {
    "project": "sample-project",
    "region": "europe-west4",
    "bucket_name": "sample-bucket",
    "image": "europe-west4-docker.pkg.dev/sample-project/imgsim/imgsim:abc123",
    "input": "gs://sample-bucket/manifests/catalogue.csv",
    # input here must not win over var.input: the template merges input/output last
    "extra_parameters": {"keep_runs": "30", "cma_cc0": "true", "input": "gs://elsewhere/not-this.csv"},
}


def sample_vars(tf: dict) -> dict:
    values = {name: _default(body) for name, body in tf["variable"].items() if "default" in body}
    values.update(SAMPLE_VARS)
    return values


def _default(body: dict):
    value = body["default"]
    return {} if value in ("{}", "${{}}") else value


class Unresolved(Exception):
    """An expression beyond the test's interpolation of plain references."""


def resolve(tf: dict, expression: str, variables: dict) -> str:
    """Interpolate ${var.X}, ${local.X} and the bucket's name in a Terraform string template."""
    bucket = resources_of(tf, "google_storage_bucket")["imgsim"]
    assert bucket["name"] == "${var.bucket_name}"

    def one(match):
        ref = match.group(1).strip()
        if re.fullmatch(r"var\.\w+", ref):
            return str(variables[ref[4:]])
        if re.fullmatch(r"local\.\w+", ref):
            return resolve(tf, tf["locals"][ref[6:]], variables)
        if ref == "google_storage_bucket.imgsim.name":
            return variables["bucket_name"]
        raise Unresolved(ref)

    return re.sub(r"\$\{([^}]+)\}", one, expression)


class TemplateExpression:
    """Evaluates the subset of Terraform template expressions launch_body.json.tftpl uses:
    identifiers, calls of jsonencode and merge, object constructors { key = expr, ... }, strings."""

    TOKEN = re.compile(r'\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(){},=])|(?P<string>"[^"]*"))')
    FUNCTIONS = {
        "jsonencode": lambda value: json.dumps(value),
        "merge": lambda *maps: {k: v for m in maps for k, v in m.items()},
    }

    def __init__(self, text: str, variables: dict):
        self.tokens, pos = [], 0
        while text[pos:].strip():
            match = self.TOKEN.match(text, pos)
            assert match, f"unsupported template syntax at {text[pos:]!r}"
            self.tokens.append(next((k, v) for k, v in match.groupdict().items() if v is not None))
            pos = match.end()
        self.pos, self.variables = 0, variables

    def evaluate(self):
        value = self.expression()
        assert self.pos == len(self.tokens), f"trailing tokens {self.tokens[self.pos:]}"
        return value

    def take(self, expected=None):
        kind, value = self.tokens[self.pos]
        assert expected is None or value == expected, f"expected {expected!r}, got {value!r}"
        self.pos += 1
        return kind, value

    def peek(self):
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def expression(self):
        kind, value = self.take()
        if kind == "string":
            return json.loads(value)
        if kind == "name" and self.peek() == "(":
            self.take("(")
            args = []
            while self.peek() != ")":
                args.append(self.expression())
                if self.peek() == ",":
                    self.take(",")
            self.take(")")
            return self.FUNCTIONS[value](*args)
        if kind == "name":
            return self.variables[value]
        if value == "{":
            obj = {}
            while self.peek() != "}":
                kind, key = self.take()
                key = json.loads(key) if kind == "string" else key
                self.take("=")
                obj[key] = self.expression()
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
            return obj
        raise AssertionError(f"unexpected {value!r}")


class Recording(dict):
    """Template variables that remember which of them the template read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def render_template(text: str, variables: dict) -> str:
    assert "%{" not in text, "the test's renderer handles ${...} interpolations only"
    out, pos = [], 0
    while (start := text.find("${", pos)) >= 0:
        depth, end = 0, start + 1
        while True:  # the matching brace: object constructors nest inside ${...}
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
            end += 1
        out.append(text[pos:start])
        out.append(str(TemplateExpression(text[start + 2:end], variables).evaluate()))
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


def template_variables(body_expression: str) -> tuple[str, dict[str, str]]:
    """The templatefile(...) call in the scheduler job's body: (file name, {template var: reference})."""
    match = re.search(r'templatefile\("\$\{path\.module\}/([^"]+)",\s*\{(.*)\}\)', body_expression, re.S)
    assert match, f"the body is not base64encode(templatefile(...)): {body_expression}"
    mapping = dict(re.findall(r"(\w+)\s*=\s*([\w.]+)", match.group(2)))
    return match.group(1), mapping


def launch_body(tf: dict, variables: dict) -> tuple[dict, Recording]:
    """The scheduler's request body rendered with sample variables, and the template's variables."""
    job = resources_of(tf, "google_cloud_scheduler_job")["reprocess"]
    name, mapping = template_variables(block(job, "http_target")["body"])
    context = Recording()
    for var, ref in mapping.items():
        if ref.startswith("var."):
            context[var] = variables[ref[4:]]
        elif ref == "local.profile_parameters":  # the profile's parameters less its image, as main.tf says
            profile = load_json(INFRA / "profiles" / f"{variables['worker_profile']}.json")
            context[var] = {k: v for k, v in profile.get("--parameters", {}).items() if k != "sdk_container_image"}
        elif ref == "local.environment":
            context[var] = {key: _resolve_or_placeholder(tf, value, variables)
                            for key, value in tf["locals"]["environment"].items()}
        else:
            context[var] = resolve(tf, tf["locals"][ref[len("local."):]], variables)
    text = render_template((TERRAFORM / name).read_text(encoding="utf-8"), context)
    return json.loads(text), context


def _resolve_or_placeholder(tf: dict, expression: str, variables: dict) -> str:
    try:
        return resolve(tf, expression, variables)
    except Unresolved:
        return f"<{expression}>"


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


# --- template parameters <-> imgsim run ----------------------------------------------------------

def test_metadata_json_is_generated_from_the_flags():
    from imgsim.config.template import metadata_json

    assert (INFRA / "metadata.json").read_text(encoding="utf-8") == metadata_json(), (
        "infra/metadata.json drifted from the flags of imgsim run: "
        "regenerate it with `imgsim template-metadata --output infra/metadata.json`")


def test_every_template_parameter_is_accepted_as_templates_pass_it():
    from imgsim.config.parser import parse_run_args

    declared = run_flags()
    for name, p in parameters().items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{name}: Flex Template parameters use underscores"
        flag = declared[name]
        if flag.kind is str:
            value = str(flag.field.default) if flag.spec.choices else (  # a choice alone may need others
                "r1" if name == "run_id" else "https://v.example/?m={manifest}" if name == "iiif_viewer"
                else str(flag.field.default or "gs://b/x"))
        elif flag.kind is bool:
            value = "true"
        else:  # a number the flag accepts: its default, or above its minimum
            value = str(flag.field.default if flag.field.default is not None else max(3, flag.spec.minimum or 0))
        needs = ["--site=true"] if name in ("title", "originals", "site_output", "iiif_viewer") else []  # the site's
        options, beam_args = parse_run_args(["--input=cma", "--output=gs://b/o", *needs, f"--{name}={value}"])
        assert beam_args == [], f"--{name} reached Beam instead of imgsim"
        assert str(getattr(options, name)).lower() == value.lower() or getattr(options, name) == type(
            getattr(options, name))(value), (name, value)


def test_every_flag_is_a_template_parameter_or_excluded_with_a_reason():
    offered = set(parameters())
    for name, declared in run_flags().items():
        if declared.spec.template:
            assert name in offered, f"--{name} is a template parameter but missing from metadata.json"
        else:
            assert name not in offered and declared.spec.template_excluded.strip(), name
    assert {"wait", "progress_interval"} <= {n for n, d in run_flags().items() if not d.spec.template}


def test_parameter_metadata_is_complete():
    doc = metadata()
    assert doc["name"] and doc["description"]
    names = [p["name"] for p in doc["parameters"]]
    assert len(names) == len(set(names)), "duplicate parameter names"
    for p in doc["parameters"]:
        assert set(p) <= METADATA_KEYS, f"{p['name']}: keys beyond Dataflow's documented ones: {set(p) - METADATA_KEYS}"
        assert p["label"].strip() and p["helpText"].strip()
        assert p.get("isOptional", False) is (p["name"] not in REQUIRED_PARAMETERS), p["name"]
        for regex in p.get("regexes", []):
            # Dataflow matches POSIX egrep; without backslashes Python's re reads these the same way
            assert "\\" not in regex and regex.startswith("^") and regex.endswith("$"), (p["name"], regex)


def test_regexes_accept_the_defaults_and_respect_types():
    declared = run_flags()
    for name, p in parameters().items():
        flag = declared[name]
        default = flag.field.default
        for regex in p.get("regexes", []):
            if default not in (None, False):
                text = str(default).lower() if isinstance(default, bool) else str(default)  # as templates pass it
                assert re.search(regex, text), f"{name}: {regex} refuses the default {default!r}"
            if flag.kind is int:
                assert re.search(regex, "10") and not re.search(regex, "1.5"), (name, regex)
            if flag.kind is float:
                assert re.search(regex, "0.5") and not re.search(regex, "x"), (name, regex)


def test_enum_regexes_match_the_code():
    from imgsim.embed.decode import RESIZE_MODES
    from imgsim.embed.model import LAYER_DIMS, PRECISIONS
    from imgsim.index.searcher import MODES, REORDER_TYPES
    from imgsim.runs.layout import RUN_ID_PATTERN

    params = parameters()
    for name, values in (("layer", LAYER_DIMS), ("precision", PRECISIONS), ("resize", RESIZE_MODES),
                         ("index_mode", MODES), ("index_reorder_type", REORDER_TYPES)):
        (regex,) = params[name]["regexes"]
        match = re.fullmatch(r"\^\(([^()]*)\)\$", regex)
        assert match and set(match.group(1).split("|")) == set(values), f"{name}: {regex} vs {list(values)}"
    assert params["run_id"]["regexes"] == [RUN_ID_PATTERN]


def test_boolean_parameters_take_true_or_false():
    params = parameters()
    for name, flag in run_flags().items():
        if flag.kind is bool and name in params:
            assert params[name]["regexes"] == ["^(true|false)$"], name


def test_boolean_parameters_reach_imgsim_as_flex_templates_pass_them():
    from imgsim.config.parser import parse_run_args

    for name, flag in run_flags().items():
        if flag.kind is not bool or name not in parameters():
            continue
        for value, expected in (("true", True), ("false", False)):
            needs = ["--site=true"] if name == "originals" else []  # a setting of the site
            options, _ = parse_run_args(["--input=cma", "--output=gs://b/o", *needs, f"--{name}={value}"])
            assert getattr(options, name) is expected, (name, value)


def test_launcher_returns_when_beam_only_writes_the_job_file(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from apache_beam.runners.dataflow.dataflow_runner import DataflowPipelineResult

    from imgsim.config.options import RunOptions
    from imgsim.pipelines import launcher
    from imgsim.storage import ObjectStore

    layout = SimpleNamespace(run_id="20261125T030000Z", run_dir="gs://b/imgsim/runs/20261125T030000Z",
                             output="gs://b/imgsim", started_path=str(tmp_path / "started.json"),
                             stopped_path=str(tmp_path / "stopped.json"))
    plan = SimpleNamespace(layout=layout, input=SimpleNamespace(describe=lambda: {"kind": "cma"}))
    monkeypatch.setattr(launcher, "preflight", lambda *a, **k: plan)
    # what DataflowRunner.run_pipeline returns when create_job only wrote the template file
    monkeypatch.setattr(launcher, "run_plan", lambda p, o, *a, **k: DataflowPipelineResult(None, None, o))
    job = launcher.launch(RunOptions(input="cma", output="gs://b/imgsim"),
                          ["--runner=DataflowRunner", "--template_location=gs://b/staging/job_object"], ObjectStore())
    assert job.run_id == layout.run_id and job.job_id is None and job.report()["run_dir"] == layout.run_dir
    assert json.loads((tmp_path / "started.json").read_text())["run_id"] == layout.run_id


# --- images --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_uses_the_pinned_beam_and_python(name):
    beam, kwargs = setup_py()
    doc = dockerfile(name)
    python = re.search(r">=\s*3\.(\d+)\s*,\s*<\s*3\.(\d+)", kwargs["python_requires"])
    assert python and int(python.group(2)) == int(python.group(1)) + 1, "setup.py allows one Python minor"
    minor = f"3{python.group(1)}"
    assert doc["args"]["BEAM_VERSION"] == beam == constraints()["apache-beam"]
    assert doc["from"] == [f"apache/beam_python3.{python.group(1)}_sdk:{beam}"]
    ((source, src_path, dst_path),) = doc["copy_from"]
    image, tag = source.rsplit(":", 1)
    assert image == f"gcr.io/dataflow-templates-base/python{minor}-template-launcher-base"
    assert re.fullmatch(r"20\d{6}_RC\d\d", tag), f"{name}: pin a dated launcher tag, not {tag!r}"
    assert src_path == dst_path == "/opt/google/dataflow/python_template_launcher"
    assert any('"apache-beam[gcp]==${BEAM_VERSION}"' in run for run in doc["run"]), \
        "the install must hold Beam at the pinned version"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_copies_the_package_and_launches_the_launcher(name):
    _, kwargs = setup_py()
    doc = dockerfile(name)
    workdir = doc["workdir"]
    copied = {src for sources, dest in doc["copy"] for src in sources
              if dest.rstrip("/") in (".", workdir) or dest == src}
    wanted = {"setup.py", "pyproject.toml", "constraints.txt"} | set(kwargs["package_dir"].values())
    assert wanted <= copied, f"{name} does not copy {wanted - copied}"
    main = doc["env"]["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    assert main.startswith(workdir + "/")
    launcher = ROOT / main[len(workdir) + 1:]
    assert launcher.is_file(), f"{main} is not a file of the repository"
    assert launcher.relative_to(ROOT).parts[0] in copied
    assert 'if __name__ == "__main__"' in launcher.read_text(encoding="utf-8")
    # the image is the workers' SDK container too: nothing to install at launch
    assert not {"FLEX_TEMPLATE_PYTHON_SETUP_FILE", "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE"} & set(doc["env"])
    assert doc["entrypoint"] == ["/opt/apache/beam/boot"]


def test_gpu_image_swaps_tensorflow_cpu_for_the_cuda_build():
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    _, kwargs = setup_py()
    cpu_range = next(Requirement(r).specifier for r in kwargs["install_requires"]
                     if Requirement(r).name == "tensorflow-cpu")
    pinned = constraints()["tensorflow-cpu"]
    gpu = dockerfile("Dockerfile.gpu")
    spec = Requirement(gpu["args"]["TENSORFLOW_SPEC"])
    assert spec.name == "tensorflow" and "and-cuda" in spec.extras
    assert pinned in spec.specifier and pinned in cpu_range, (spec, cpu_range, pinned)
    assert isinstance(spec.specifier, SpecifierSet)
    install = " && ".join(gpu["run"])
    assert "--no-deps ." in install and '"${TENSORFLOW_SPEC}"' in install
    cpu = " && ".join(dockerfile("Dockerfile")["run"])
    assert "and-cuda" not in cpu and "--no-deps" not in cpu


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "benchmarks/results", "**/__pycache__"} <= ignored
    for name in (*DOCKERFILES, "Dockerfile.serve"):
        for sources, _ in dockerfile(name)["copy"]:
            assert not set(sources) & ignored, f"{name} copies something .dockerignore leaves out"


def test_cloudbuild_builds_an_existing_dockerfile():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((INFRA / "cloudbuild.yaml").read_text())
    (step,) = doc["steps"]
    assert step["args"][:3] == ["build", "-f", "${_DOCKERFILE}"]
    assert (ROOT / doc["substitutions"]["_DOCKERFILE"]).is_file()
    assert doc["images"] == ["${_IMAGE}"]


def test_serve_image_installs_the_service_and_follows_latest():
    """infra/Dockerfile.serve: the package at CI's versions without Beam, a non-root user, and a
    command that is a valid `imgsim serve` following IMGSIM_INDEX's LATEST on Cloud Run's PORT."""
    import shlex

    from imgsim.config.parser import parse

    _, kwargs = setup_py()
    doc = dockerfile("Dockerfile.serve")
    python = re.search(r">=\s*3\.(\d+)", kwargs["python_requires"]).group(1)
    assert doc["from"] == [f"python:3.{python}-slim"]
    copied = {src for sources, _ in doc["copy"] for src in sources}
    assert {"setup.py", "constraints.txt"} | set(kwargs["package_dir"].values()) <= copied
    install = " && ".join(doc["run"])
    assert '-c constraints.txt ".[serve]"' in install and "pip check" in install and "pipeline" not in install
    assert doc["user"] and doc["user"] != "root"
    env = {**doc["env"], "IMGSIM_INDEX": "gs://bucket/imgsim"}
    words = shlex.split(re.sub(r'\$\{?(\w+)\}?', lambda m: env[m.group(1)], doc["cmd"]))
    assert words[:3] == ["exec", "imgsim", "serve"]
    options = parse(words[2:]).options
    assert options.index == "gs://bucket/imgsim" and options.run_id is None  # follows LATEST
    assert (options.host, options.port, options.refresh_seconds) == ("0.0.0.0", 8080, 30.0)


def test_cloud_run_serves_the_output_root_the_schedule_publishes():
    tf = terraform()
    service = resources_of(tf, "google_cloud_run_v2_service")["serve"]
    assert service["count"] == '${var.serve_image == "" ? 0 : 1}'
    template = block(service, "template")
    assert template["service_account"] == "${google_service_account.server[0].email}"
    scaling = block(template, "scaling")
    assert (scaling["min_instance_count"], scaling["max_instance_count"]) == (
        "${var.serve_min_instances}", "${var.serve_max_instances}")
    container = block(template, "containers")
    assert container["image"] == "${var.serve_image}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"IMGSIM_INDEX": "${local.output}", "IMGSIM_REFRESH_SECONDS": "${tostring(var.serve_refresh_seconds)}"}
    assert set(dockerfile("Dockerfile.serve")["env"]) >= {"IMGSIM_REFRESH_SECONDS"}
    assert block(block(container, "startup_probe"), "http_get")["path"] == "/healthz"
    variables = tf["variable"]
    assert variables["serve_image"]["default"] == "" and variables["serve_refresh_seconds"]["default"] == 30
    assert variables["serve_public"]["default"] is False


# --- Terraform -----------------------------------------------------------------------------------

def test_terraform_parses():
    import hcl2

    files = sorted(TERRAFORM.glob("*.tf"))
    assert {"main.tf", "variables.tf", "outputs.tf", "versions.tf"} <= {f.name for f in files}
    for path in files:
        with open(path, encoding="utf-8") as f:
            assert hcl2.load(f), path


def test_terraform_variables():
    variables = terraform()["variable"]
    assert {"project", "region", "bucket_name", "image", "schedule", "time_zone", "run_retention_days",
            "input", "extra_parameters", "worker_profile"} <= set(variables)
    assert variables["schedule"]["default"] == "0 3 * * *"
    assert variables["run_retention_days"]["default"] == 90
    assert variables["worker_profile"]["default"] == "cpu"
    assert "map(string)" in variables["extra_parameters"]["type"]
    validation = block(variables["worker_profile"], "validation")["condition"]
    allowed = set(re.findall(r'\\?"(\w+)\\?"', re.search(r"contains\(\[(.*?)\]", validation).group(1)))
    assert allowed == {p.stem for p in (INFRA / "profiles").glob("*.json")}


def test_bucket_lifecycle():
    tf = terraform()
    bucket = resources_of(tf, "google_storage_bucket")["imgsim"]
    assert bucket["uniform_bucket_level_access"] is True
    assert block(bucket, "versioning")["enabled"] is False
    rules = [block(rule, "condition") for rule in bucket["lifecycle_rule"]]
    assert all(block(rule, "action")["type"] == "Delete" for rule in bucket["lifecycle_rule"])
    scratch = next(r for r in rules if "tmp/" in r["matches_prefix"])
    assert set(scratch["matches_prefix"]) == {"tmp/", "staging/"} and scratch["age"] == 7
    runs = next(r for r in rules if any(p.endswith("/runs/") for p in r["matches_prefix"]))
    assert runs["age"] == "${var.run_retention_days}"
    assert runs["matches_prefix"] == ["${var.output_prefix}/runs/"]
    # the runs rule must cover the output's runs/ and never LATEST
    variables = sample_vars(tf)
    output = resolve(tf, tf["locals"]["output"], variables)
    prefix = resolve(tf, runs["matches_prefix"][0], variables)
    assert output == f"gs://{variables['bucket_name']}/{prefix[:-len('runs/')]}".rstrip("/")
    assert not f"{prefix[:-len('runs/')]}LATEST".startswith(prefix)


def test_service_accounts_have_least_privilege():
    tf = terraform()
    accounts = resources_of(tf, "google_service_account")
    assert set(accounts) == {"worker", "scheduler", "server"}
    worker, scheduler = ("serviceAccount:${google_service_account.%s.email}" % n for n in ("worker", "scheduler"))
    server = "serviceAccount:${google_service_account.server[0].email}"

    project_roles = {(b["role"], b["member"]) for b in resources_of(tf, "google_project_iam_member").values()}
    assert project_roles == {("roles/dataflow.worker", worker), ("roles/dataflow.developer", scheduler)}, \
        "project-wide roles beyond dataflow.worker and dataflow.developer"

    bucket_roles = {(b["role"], b["member"]) for b in resources_of(tf, "google_storage_bucket_iam_member").values()}
    assert ("roles/storage.objectAdmin", worker) in bucket_roles
    for b in resources_of(tf, "google_storage_bucket_iam_member").values():
        assert b["bucket"] == "${google_storage_bucket.imgsim.name}"
        if b["member"] == scheduler:  # the scheduler reads the template spec only
            assert b["role"] == "roles/storage.objectViewer" and "/objects/templates/" in block(b, "condition")["expression"]
        if b["member"] == server:  # the service reads the output root only
            assert b["role"] == "roles/storage.objectViewer"
            assert "/objects/${var.output_prefix}/" in block(b, "condition")["expression"]
    assert any(b["member"] == server for b in resources_of(tf, "google_storage_bucket_iam_member").values())

    (repo_binding,) = resources_of(tf, "google_artifact_registry_repository_iam_member").values()
    assert (repo_binding["role"], repo_binding["member"]) == ("roles/artifactregistry.reader", worker)
    assert repo_binding["repository"] == "${google_artifact_registry_repository.imgsim.name}"

    (act_as,) = resources_of(tf, "google_service_account_iam_member").values()
    assert act_as["role"] == "roles/iam.serviceAccountUser"
    assert act_as["service_account_id"] == "${google_service_account.worker.name}"
    assert act_as["member"] == scheduler
    assert not resources_of(tf, "google_project_iam_binding") and not resources_of(tf, "google_project_iam_policy")


def test_artifact_registry_repository():
    repo = resources_of(terraform(), "google_artifact_registry_repository")["imgsim"]
    assert repo["format"] == "DOCKER"
    assert repo["location"] == "${var.region}"


def test_scheduler_job_launches_the_flex_template():
    tf = terraform()
    variables = sample_vars(tf)
    job = resources_of(tf, "google_cloud_scheduler_job")["reprocess"]
    assert job["schedule"] == "${var.schedule}" and job["time_zone"] == "${var.time_zone}"
    target = block(job, "http_target")
    assert target["http_method"] == "POST"
    uri = resolve(tf, target["uri"], variables)
    assert "flexTemplates:launch" in uri
    assert uri == (f"https://dataflow.googleapis.com/v1b3/projects/{variables['project']}"
                   f"/locations/{variables['region']}/flexTemplates:launch")
    token = block(target, "oauth_token")
    assert token["service_account_email"] == "${google_service_account.scheduler.email}"
    assert target["body"].startswith("${base64encode(templatefile(")


def test_launch_body_renders_to_a_launch_request():
    tf = terraform()
    variables = sample_vars(tf)
    request, context = launch_body(tf, variables)
    assert context.read == set(context), f"passed to the template but unused: {set(context) - context.read}"
    launch = request["launchParameter"]
    assert launch["containerSpecGcsPath"].endswith(TEMPLATE_PATH_SUFFIX)
    assert launch["containerSpecGcsPath"] == f"gs://{variables['bucket_name']}/{TEMPLATE_PATH_SUFFIX}"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", launch["jobName"])
    params = launch["parameters"]
    assert params["input"] == variables["input"], "extra_parameters must not override input"
    assert params["output"] == f"gs://{variables['bucket_name']}/{variables['output_prefix']}"
    assert set(params) <= set(parameters()), f"not template parameters: {set(params) - set(parameters())}"
    assert all(isinstance(v, str) for v in params.values()), "Flex Template parameters are strings"
    assert "run_id" not in params, "a fixed run_id would be refused from the second run on"
    env = launch["environment"]
    assert env["tempLocation"] == f"gs://{variables['bucket_name']}/tmp"
    assert env["stagingLocation"] == f"gs://{variables['bucket_name']}/staging"
    assert env["serviceAccountEmail"] == "<${google_service_account.worker.email}>"
    assert env["sdkContainerImage"] == "<${local.worker_image}>"
    assert re.fullmatch(r'\$\{var\.worker_profile == "gpu" \? var\.gpu_image : var\.image\}',
                        tf["locals"]["worker_image"]), "GPU workers run the GPU image, CPU workers the CPU one"

    types = pytest.importorskip("google.cloud.dataflow_v1beta3.types")
    launch_fields = {camel(f) for f in types.LaunchFlexTemplateParameter.meta.fields}
    env_fields = {camel(f) for f in types.FlexTemplateRuntimeEnvironment.meta.fields}
    assert set(launch) <= launch_fields, set(launch) - launch_fields
    assert set(env) <= env_fields, f"not FlexTemplateRuntimeEnvironment fields: {set(env) - env_fields}"


def test_worker_profiles():
    gcloud_run_flags = {"--worker-machine-type", "--max-workers", "--num-workers", "--additional-experiments",
                        "--additional-pipeline-options", "--parameters", "--disable-public-ips", "--network",
                        "--subnetwork", "--worker-region", "--worker-zone", "--launcher-machine-type"}
    profiles = {p.stem: load_json(p) for p in (INFRA / "profiles").glob("*.json")}
    assert set(profiles) == {"cpu", "int8", "gpu"}
    template_parameters = set(parameters())
    for name, profile in profiles.items():
        assert set(profile) <= gcloud_run_flags, f"{name}: not flags of gcloud dataflow flex-template run"
        assert profile["--worker-machine-type"] and int(profile["--max-workers"]) >= 1
        assert re.fullmatch(r"\$\{[A-Z_]+\}", profile["--parameters"]["sdk_container_image"]), \
            "the image is a ${PLACEHOLDER} for envsubst"
        assert set(profile["--parameters"]) - {"sdk_container_image"} <= template_parameters, name
    assert not any(e.startswith("worker_accelerator") for e in profiles["cpu"].get("--additional-experiments", []))
    (accelerator,) = [e for e in profiles["gpu"]["--additional-experiments"] if e.startswith("worker_accelerator=")]
    assert re.fullmatch(r"worker_accelerator=type:nvidia-[a-z0-9-]+;count:[1-9][0-9]*;install-nvidia-driver(:[0-9a-z]+)?",
                        accelerator), accelerator
    if "nvidia-tesla-t4" in accelerator:  # T4s attach to N1 machines only
        assert profiles["gpu"]["--worker-machine-type"].startswith("n1-")
    # int8: OpenVINO on a machine family with int8 dot products (N2/C2: AVX512-VNNI; C3: AMX), one SDK
    # process per worker so that OpenVINO's threads have the machine to themselves
    int8 = profiles["int8"]
    assert {k: int8["--parameters"][k] for k in ("backend", "precision")} == {"backend": "openvino", "precision": "int8"}
    assert int8["--worker-machine-type"].split("-")[0] in {"n2", "c2", "c3", "c3d", "n4", "c4"}
    assert "no_use_multiple_sdk_containers" in int8["--additional-experiments"]
    tf = terraform()
    assert 'profiles/${var.worker_profile}.json' in tf["locals"]["profile"]
    for key in ("--worker-machine-type", "--max-workers", "--additional-experiments"):
        assert key in " ".join(tf["locals"]["environment"].values()), f"Terraform ignores the profiles' {key}"


# --- runbook -------------------------------------------------------------------------------------

def test_runbook_names_existing_files():
    text = (INFRA / "RUNBOOK.md").read_text(encoding="utf-8")
    for path in set(re.findall(r"infra/[\w./-]+\w", text)):
        assert (ROOT / path).exists(), f"RUNBOOK.md names {path}, which does not exist"
    for command in ("gcloud dataflow flex-template build", "--metadata-file infra/metadata.json",
                    "terraform apply", "gcloud scheduler jobs run", "summary.json",
                    "imgsim rollback", "imgsim runs", "imgsim verify"):
        assert command in text, command


def test_runbook_imgsim_commands_are_real_commands():
    """Every `imgsim ...` line of the runbook parses with imgsim's own parser."""
    from imgsim.config.parser import parse

    text = (INFRA / "RUNBOOK.md").read_text(encoding="utf-8")
    commands = re.findall(r"`(imgsim (?:runs|rollback|verify|query|explore|template-metadata) [^`]*)`", text)
    commands += re.findall(r"^\s*(imgsim (?:runs|rollback|verify|query) [^#\n]*)", text, re.M)
    assert len(commands) >= 6
    for command in commands:
        argv = shlex.split(command.replace("$SITE_BUCKET", "site").replace("$BUCKET", "bucket")
                           .replace("RUN_ID", "r1").replace("SOME_ID", "x"))[1:]
        parse(argv)  # raises ConfigError with what is wrong
    # the schedule's extra_parameters shown for the site are template parameters
    for names in re.findall(r"extra_parameters = \{([^}]*)\}", text):
        for name in re.findall(r"(\w+) = ", names):
            assert name in parameters(), f"RUNBOOK.md: extra_parameters.{name} is not a template parameter"
