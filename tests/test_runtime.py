"""The process-wide settings a run makes for speed: memory reuse and the compilation cache."""

import os
import subprocess
import sys

import pytest

from fmjax.errors import UserError
from fmjax.run.runtime import use_compilation_cache, use_freed_memory_again


def test_freed_memory_is_kept_for_reuse_on_glibc():
    # This machine's Python runs on glibc, whose mallopt accepts both settings.
    assert use_freed_memory_again() is True
    assert use_freed_memory_again() is True  # again: a no-op that says the same


def test_compiled_programs_are_kept_in_the_cache_folder(tmp_path):
    cache = tmp_path / "cache"
    program = (
        "import jax, jax.numpy as jnp\n"
        "from fmjax.run.runtime import use_compilation_cache\n"
        f"use_compilation_cache({str(cache)!r})\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "print(float(jax.jit(lambda x: jnp.sin(x) * 2)(1.0)))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for _ in range(2):  # the second run reads what the first wrote
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "1.6829419136047363"  # 2 sin(1) in float32
    assert any(cache.iterdir())
    # Off: "" leaves JAX's setting alone.
    off = subprocess.run(
        [sys.executable, "-c", "import jax\nfrom fmjax.run.runtime import use_compilation_cache\n"
         "use_compilation_cache('')\nprint(jax.config.jax_compilation_cache_dir)"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert off.stdout.strip() == "None", off.stderr[-2000:]


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError) as error:
        use_compilation_cache(str(tmp_path / "a_file" / "cache"))
    assert str(error.value) == (
        f"config.compilation_cache_dir {tmp_path / 'a_file' / 'cache'} cannot be created (Not a directory); "
        'set it to a writable folder, or to "" to turn the cache off'
    )
