"""Crash and concurrency safety: killed pushes leave nothing visible, parallel pushes lose nothing."""

import random
import subprocess
import sys
import textwrap
import threading

import pytest

from mask_store.errors import BaseMismatch
from mask_store.format import read_mask_file, save_mask
from mask_store.store import Store

from .helpers import BASE_B, random_mask

# Each fault exits the process abruptly (no cleanup, like SIGKILL) at one point of a push.
LOCAL_FAULTS = {
    "mid-blob-write": "import os; real = os.fsync\nos.fsync = lambda fd: os._exit(137)",
    "before-version-lock": "from mask_store import local\nlocal._Transaction.__enter__ = lambda self: os._exit(137)",
    "before-commit": textwrap.dedent(
        """
        from mask_store import local
        def die(self, *exc):
            os._exit(137)
        local._Transaction.__exit__ = die
        """
    ),
}
S3_FAULTS = {
    "after-blob-upload": textwrap.dedent(
        """
        from mask_store import s3
        real = s3.S3Backend._put
        calls = []
        def put(self, key, body, create_only=False):
            calls.append(key)
            if "/versions/" in key:
                os._exit(137)
            return real(self, key, body, create_only)
        s3.S3Backend._put = put
        """
    ),
}


def _push_in_child(store_uri, path, name, fault=""):
    code = f"import os\n{fault}\nfrom mask_store.store import Store\nStore({store_uri!r}).push({str(path)!r}, {name!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def _check_intact(store, expected_refs):
    assert [r.ref for r in store.versions()] == expected_refs
    assert store.verify() == []


@pytest.mark.parametrize("fault", sorted(LOCAL_FAULTS))
def test_killed_local_push_leaves_no_partial_version(tmp_path, fault):
    uri = str(tmp_path / "store")
    store = Store(uri)
    first, second = tmp_path / "a.mask", tmp_path / "b.mask"
    save_mask(random_mask(0), first)
    save_mask(random_mask(1), second)
    store.push(first, "math")
    result = _push_in_child(uri, second, "math", LOCAL_FAULTS[fault])
    assert result.returncode == 137, result.stderr
    _check_intact(Store(uri), ["math@1"])
    assert Store(uri).push(second, "math").version == 2
    _check_intact(Store(uri), ["math@1", "math@2"])


@pytest.mark.parametrize("fault", sorted(S3_FAULTS))
def test_killed_s3_push_leaves_no_partial_version(tmp_path, s3_store_uri, fault):
    store = Store(s3_store_uri)
    first, second = tmp_path / "a.mask", tmp_path / "b.mask"
    save_mask(random_mask(0), first)
    save_mask(random_mask(1), second)
    store.push(first, "math")
    result = _push_in_child(s3_store_uri, second, "math", S3_FAULTS[fault])
    assert result.returncode == 137, result.stderr
    _check_intact(store, ["math@1"])
    assert store.gc(grace_s=0) == [read_mask_file(second).digest]  # the orphan blob is collectable


def test_sigkill_at_random_moments_never_damages_the_store(tmp_path):
    """Real kills at arbitrary times: whatever survives is whole, and verify passes."""
    uri = str(tmp_path / "store")
    Store(uri)
    rng = random.Random(0)
    for i in range(8):
        path = tmp_path / f"{i}.mask"
        save_mask(random_mask(i), path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mask_store.cli", "--store", uri, "push", str(path), "--name", "math"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=rng.uniform(0.05, 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    store = Store(uri)
    records = store.versions()
    # A killed push never claims a number: the versions that exist are exactly 1..n, each with its blob.
    assert [r.version for r in records] == list(range(1, len(records) + 1))
    assert store.verify() == []
    for r in records:
        assert read_mask_file(store.local_path(r)).digest == r.digest


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_four_processes_pushing_to_one_name(tmp_path, backend, request):
    uri = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_store_uri")
    Store(uri)
    per_process = 4
    paths = []
    for i in range(4 * per_process):
        paths.append(tmp_path / f"{i}.mask")
        save_mask(random_mask(i), paths[-1])
    script = textwrap.dedent(
        """
        import sys
        from mask_store.store import Store
        store = Store(sys.argv[1])
        for path in sys.argv[2:]:
            store.push(path, "shared")
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, uri, *map(str, paths[k::4])], stderr=subprocess.PIPE)
        for k in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    store = Store(uri)
    records = store.versions()
    assert sorted(r.version for r in records) == list(range(1, 4 * per_process + 1))
    assert {r.digest for r in records} == {read_mask_file(p).digest for p in paths}
    assert store.verify() == []


def test_local_push_sets_its_tags_in_the_version_transaction(tmp_path):
    """A push is killed wherever a separate tag write would come; the version it made carries its tag."""
    uri = str(tmp_path / "store")
    path = tmp_path / "a.mask"
    save_mask(random_mask(0), path)
    Store(uri)
    fault = "from mask_store import local\nlocal.LocalBackend.set_tag = lambda *a: os._exit(137)"
    code = f"import os\n{fault}\nfrom mask_store.store import Store\nStore({uri!r}).push({str(path)!r}, 'math', ['prod'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Store(uri).resolve("math:prod").version == 1


def test_local_backend_rechecks_the_base_under_its_lock(tmp_path):
    """Two first pushes of one name with different bases: the second to commit is refused."""
    store = Store(tmp_path / "store")
    path = tmp_path / "a.mask"
    save_mask(random_mask(0), path)
    record = store.push(path, "math")
    fields = {k: v for k, v in record.stored().items() if k not in ("name", "version", "removed_at")}
    with pytest.raises(BaseMismatch):
        store.backend.add_version("math", {**fields, "base_id": "f" * 64}, path.read_bytes(), [])
    assert [r.ref for r in store.versions()] == ["math@1"]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_first_pushes_with_different_bases_never_both_land(tmp_path, backend, request):
    """Two pushes of a new name, each held until both have passed Store.push's own base check: one lands."""
    uri = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_store_uri")
    Store(uri)
    paths = [tmp_path / "a.mask", tmp_path / "b.mask"]
    save_mask(random_mask(0), paths[0])
    save_mask(random_mask(1, base_id=BASE_B), paths[1])
    for trial in range(5):
        barrier = threading.Barrier(2, timeout=30)
        outcomes = []

        def push(path):
            store = Store(uri)
            real = store.backend.records
            calls = []

            def records(name=None):
                out = real(name)
                if not calls:  # Store.push's check has read the (empty) name: wait for the other push
                    calls.append(name)
                    barrier.wait()
                return out

            store.backend.records = records
            try:
                outcomes.append(store.push(path, f"race{trial}").base_id)
            except BaseMismatch:
                outcomes.append("refused")

        threads = [threading.Thread(target=push, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("refused") == 1, outcomes
        assert len({r.base_id for r in Store(uri).versions(name=f"race{trial}")}) == 1
