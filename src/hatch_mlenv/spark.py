"""The Spark stage: a packed, relocatable environment for executors, and the Spark settings that use it.

`pack` archives the installed linux-64 prefix with conda-pack (prefix
placeholders are restored in the archive; `bin/conda-unpack` rewrites them for
wherever it is unpacked). `settings` gives the properties: the archive as
`spark.archives=...#environment`, executors' python inside it, the
environment's non-secret variables as `spark.executorEnv.*`, the Maven
packages and repositories, and `[tool.mlenv.spark] conf`.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from hatch_mlenv.errors import PackError, UsageError

PLATFORM = "linux-64"
ARCHIVE_ALIAS = "environment"


def default_archive(env: Any) -> Path:
    return env.state_dir / "packs" / f"{env.name}-{env.digest[:12]}.tar.gz"


def pack(env: Any, output: Path | None = None, prefix: Path | None = None) -> Path:
    """Pack the installed linux-64 environment into `output` (a .tar.gz), atomically."""
    from hatch_mlenv.install import STATE_FILE
    from hatch_mlenv.spec import current_platform

    if not env.lock.for_platform(PLATFORM):
        raise PackError(f"{env.spec.lockfile}: the lock has no {PLATFORM} packages; Spark executors run linux-64")
    if current_platform() != PLATFORM:
        raise PackError(f"packing needs the {PLATFORM} environment installed, and this machine is {current_platform()}")
    prefix = (prefix or env.default_prefix).absolute()
    try:
        state = json.loads((prefix / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    if not (prefix / "conda-meta").is_dir():
        raise PackError(f"{prefix}: the environment is not installed; run `mlenv install` first")
    if state.get("digest") != env.digest:
        raise PackError(f"{prefix}: the installed environment is not the locked one; run `mlenv install` first")
    output = (output or default_archive(env)).absolute()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tar.gz", dir=output.parent)
        os.close(fd)
    except OSError as exc:
        raise PackError(f"{output}: cannot write the archive there: {exc.strerror or exc}") from None
    try:
        import conda_pack

        conda_pack.pack(prefix=str(prefix), output=partial, format="tar.gz", force=True, verbose=False,
                        ignore_missing_files=False)
        os.replace(partial, output)
    except conda_pack.CondaPackException as exc:
        raise PackError(f"cannot pack {prefix}: {exc}") from None
    finally:
        Path(partial).unlink(missing_ok=True)
    return output


def settings(env: Any, archive: Path | str) -> dict[str, str]:
    """The Spark properties that run Python work inside the packed environment."""
    spark = env.spec.spark
    properties = {
        "spark.archives": f"{archive}#{ARCHIVE_ALIAS}",
        "spark.pyspark.python": f"./{ARCHIVE_ALIAS}/bin/python",
    }
    for name, value in sorted(env.lock.variables.items()):
        if value is not None:  # secrets never go into Spark's configuration
            properties[f"spark.executorEnv.{name}"] = value
    if spark.packages:
        properties["spark.jars.packages"] = ",".join(spark.packages)
    if spark.repositories:
        properties["spark.jars.repositories"] = ",".join(spark.repositories)
    properties.update(spark.conf)
    return properties


def render(properties: dict[str, str], fmt: str) -> str:
    if fmt == "properties":  # spark-defaults.conf
        return "".join(f"{key} {value}\n" for key, value in properties.items())
    if fmt == "json":
        return json.dumps(properties, indent=2) + "\n"
    if fmt == "submit":
        return " ".join(f"--conf {shlex.quote(f'{key}={value}')}" for key, value in properties.items()) + "\n"
    raise UsageError(f"unknown format {fmt!r}: use properties, json or submit")


def configure(builder: Any, project: Path | str = ".", *, env: str | None = None, archive: Path | str | None = None) -> Any:
    """Apply the environment's Spark settings to a `SparkSession.builder`; returns the builder.
    `project` is anything `Environment.load` takes: a project, a lockfile, `NAME:VERSION`, `NAME@LABEL`.

    >>> spark = configure(SparkSession.builder.appName("train"), project=".").getOrCreate()

    A driver started from Python (a notebook, a job script) takes the executors'
    python from `PYSPARK_PYTHON`, not from `spark.pyspark.python`; so this sets
    that variable in the current process too. Executors find `./environment`
    in their working directory, where cluster managers (YARN, Kubernetes,
    standalone, `local-cluster`) unpack `spark.archives`; plain `local[*]` runs
    Python work in the driver's directory and cannot use the archive.
    """
    from hatch_mlenv.environment import Environment

    environment = Environment.load(project, env)
    properties = settings(environment, archive or default_archive(environment))
    for key, value in properties.items():
        builder = builder.config(key, value)
    os.environ["PYSPARK_PYTHON"] = properties["spark.pyspark.python"]
    return builder
