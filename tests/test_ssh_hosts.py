"""Hostfiles: YAML and DeepSpeed formats, the --hosts shorthand, and errors that name file and line."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.hosts import (HostfileError, HostSpec, apply_defaults, load_hostfile, parse_hostfile_text,
                           parse_hosts_shorthand, resolve_hosts)
from cluster.ssh import remote_command

YAML = """\
# two servers
defaults:
  user: pspnet
  port: 2222
  identity_file: /keys/id_ed25519
  venv: /opt/pspnet/.venv
  workdir: /opt/pspnet
  env: {ASCEND_GLOBAL_LOG_LEVEL: 3, SHARED: "a"}
hosts:
  - name: node0
    address: 10.0.0.1
    devices: 0-7
  - address: 10.0.0.2
    port: 22
    slots: 4
    job_root: /data/runs
    env: {SHARED: "b"}
"""


def test_yaml_hostfile_with_defaults(tmp_path):
    p = tmp_path / "hosts.yaml"
    p.write_text(YAML)
    a, b = load_hostfile(p)
    assert (a.name, a.address, a.port, a.user, a.devices) == ("node0", "10.0.0.1", 2222, "pspnet", "0-7")
    assert a.python == "/opt/pspnet/.venv/bin/python" and a.workdir == "/opt/pspnet"
    assert a.env == {"ASCEND_GLOBAL_LOG_LEVEL": "3", "SHARED": "a"}
    assert a.remote_job_root() == "/opt/pspnet/runs"
    assert a.source == f"{p}:10"
    # a host's own keys win over the defaults; env is merged key by key
    assert (b.name, b.port, b.slots, b.devices) == ("10.0.0.2", 22, 4, None)
    assert b.env == {"ASCEND_GLOBAL_LOG_LEVEL": "3", "SHARED": "b"}
    assert b.remote_job_root() == "/data/runs"
    assert b.device_spec("8") == 4 and a.device_spec("8") == "0-7"
    assert HostSpec(address="x").device_spec("8") == "8"


def test_hosts_as_mapping_and_bare_addresses():
    hosts = parse_hostfile_text("hosts:\n  gpu-a: {port: 2200}\n  gpu-b:\n")
    assert [(h.name, h.address, h.port) for h in hosts] == [("gpu-a", "gpu-a", 2200), ("gpu-b", "gpu-b", 22)]
    hosts = parse_hostfile_text("- 10.0.0.1\n- address: 10.0.0.2\n")
    assert [h.address for h in hosts] == ["10.0.0.1", "10.0.0.2"]


def test_deepspeed_lines():
    text = "# DeepSpeed style\nworker-1 slots=8\n\nworker-2 slots=8 user=me port=2022  # comment\nworker-3\n"
    hosts = parse_hostfile_text(text, "hostfile")
    assert [(h.address, h.slots, h.user, h.port) for h in hosts] == [
        ("worker-1", 8, None, 22), ("worker-2", 8, "me", 2022), ("worker-3", None, None, 22)]
    assert hosts[1].source == "hostfile:4"


@pytest.mark.parametrize("text,line,words", [
    ("hosts:\n  - address: a\n    prot: 2\n", 3, "did you mean 'port'"),
    ("hosts:\n  - address: a\n  - address: a\n", 3, "used twice"),
    ("hosts:\n  - address: a\n    devices: 3-1\n", 3, "reversed range"),
    ("hosts:\n  - address: a\n    port: 70000\n", 3, "out of range"),
    ("hosts:\n  - name: a\n", 2, "no address"),
    ("hosts:\n  - address: a\n    devices: 0-3\n    slots: 2\n", 2, "slots is 2"),
    ("hosts:\n  - address: a\n    env: {1BAD: x}\n", 3, "not a valid environment variable"),
    ("hosts:\n  - address: a\n    python: /p\n    venv: /v\n", 2, "either python or venv"),
    ("hosts:\n  - address: a\n  - address: b\n    port: 22\n    port: 23\n", 5, "given twice"),
    ("hosts: [\n", 2, "not valid YAML"),
    ("defaults:\n  address: x\nhosts: [a]\n", 2, "cannot set address"),
    ("servers:\n  - a\n", 1, "unknown top-level key"),
    ("node1 slots=x\n", 1, "not a positive device count"),
    ("node1 slots=2\nnode2 gpus=3\n", 2, "unknown key 'gpus'"),
])
def test_errors_name_file_and_line(text, line, words):
    with pytest.raises(HostfileError) as err:
        parse_hostfile_text(text, "hosts.yaml")
    assert str(err.value).startswith(f"hosts.yaml:{line}: "), str(err.value)
    assert words in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(HostfileError, match="hostfile not found"):
        load_hostfile(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(HostfileError, match="names no hosts"):
        load_hostfile(empty)


def test_shorthand():
    hosts = parse_hosts_shorthand("a, me@b:2222,c")
    assert [(h.address, h.user, h.port) for h in hosts] == [("a", None, 22), ("b", "me", 2222), ("c", None, 22)]
    for bad in ("a,,b", "a b", "a,a", "x@:22"):
        with pytest.raises(HostfileError):
            parse_hosts_shorthand(bad)


def test_resolve_hosts_tells_file_from_list(tmp_path):
    p = tmp_path / "cluster.yaml"
    p.write_text("hosts: [n1, n2]\n")
    assert [h.address for h in resolve_hosts(str(p))] == ["n1", "n2"]
    assert [h.address for h in resolve_hosts("n1,n2")] == ["n1", "n2"]
    with pytest.raises(HostfileError, match="not found"):
        resolve_hosts(str(tmp_path / "missing.yaml"))
    filled = resolve_hosts("n1", defaults={"python": "/venv/bin/python", "port": 2200})
    assert filled[0].python == "/venv/bin/python" and filled[0].port == 2200
    kept = apply_defaults(HostSpec(address="n", port=2022), {"port": 2200})
    assert kept.port == 2022


def test_to_dict_round_trip():
    h = parse_hostfile_text(YAML)[0]
    assert HostSpec.from_dict(h.to_dict()) == h


# ---------------------------------------------------------------- shell quoting of what is sent

@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=12), min_size=1, max_size=4),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12))
def test_remote_command_quotes_every_word(args, value):
    """What the remote shell parses is exactly the argv and env given: no word can inject anything."""
    import shlex
    line = remote_command(["prog", *args], {"K": value}, cwd="/a dir/it's")
    words = shlex.split(line.replace(" && ", " ; ", 1).split(" ; ", 1)[1])
    assert words == ["exec", "env", f"K={value}", "prog", *args]
    assert shlex.split(line.split(" && ", 1)[0]) == ["cd", "/a dir/it's"]


def test_remote_command_rejects_bad_env_names():
    with pytest.raises(ValueError):
        remote_command(["true"], {"-i": "x"})
    with pytest.raises(ValueError):
        remote_command(["true"], {"A B": "x"})
