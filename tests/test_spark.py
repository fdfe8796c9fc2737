"""Spark: a packed, relocatable environment, the Spark settings, and a real PySpark job using them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import assert_clean_error, mlenv, write_project

SPARK = """
[tool.mlenv.spark]
packages = ["org.apache.hadoop:hadoop-aws:3.3.4"]
repositories = ["https://repo.example.invalid/maven2"]
conf = { "spark.ui.enabled" = false, "spark.sql.shuffle.partitions" = 2 }
"""


def project(root: Path, channel: Path, python: str = "3.11", extra: str = "") -> Path:
    return write_project(
        root,
        f'channels = ["{channel}"]\nplatforms = ["linux-64"]\npython = "{python}"\nconda = ["mlenv-hello ==1.0.0"]\n'
        'variables = { MODEL_STAGE = "from-the-lock", API_TOKEN = { value = "s3cr3t-spark", secret = true } }\n'
        + extra,
    )


def test_pack_unpacks_anywhere_with_the_prefix_rewritten(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "proj", channel)
    mlenv("lock", "--project", str(root), check=True)
    assert_clean_error(mlenv("pack", "--project", str(root)), 1, "not installed", "mlenv install")
    mlenv("install", "--project", str(root), check=True)
    archive = tmp_path / "env.tar.gz"
    packed = mlenv("pack", "-o", str(archive), "--project", str(root), check=True)
    assert packed.stdout.startswith("packed demo sha256:")
    target = tmp_path / "somewhere" / "else"
    target.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target)
    unpack = subprocess.Popen([str(target / "bin" / "conda-unpack")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert unpack.wait(timeout=120) == 0, unpack.stderr.read()
    hello = subprocess.Popen([str(target / "bin" / "mlenv-hello")], stdout=subprocess.PIPE, text=True)
    assert hello.communicate(timeout=60)[0].strip() == f"hello from {target}"


def test_pack_bad_input(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "proj", channel)
    mlenv("lock", "--project", str(root), check=True)
    mlenv("install", "--project", str(root), check=True)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_clean_error(mlenv("pack", "-o", str(blocker / "env.tar.gz"), "--project", str(root)), 1,
                       "cannot write the archive there")
    mac = write_project(tmp_path / "mac", f'channels = ["{channel}"]\nplatforms = ["osx-arm64"]\nconda = ["mlenv-hello"]\n')
    mlenv("lock", "--project", str(mac), check=True)
    assert_clean_error(mlenv("pack", "--project", str(mac)), 1, "no linux-64 packages")


def test_spark_conf_formats(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "proj", channel, extra=SPARK)
    mlenv("lock", "--project", str(root), check=True)
    data = json.loads(mlenv("spark-conf", "--format", "json", "--archive", "hdfs:///envs/train.tar.gz",
                            "--project", str(root), check=True).stdout)
    assert data == {
        "spark.archives": "hdfs:///envs/train.tar.gz#environment",
        "spark.pyspark.python": "./environment/bin/python",
        "spark.executorEnv.MODEL_STAGE": "from-the-lock",
        "spark.jars.packages": "org.apache.hadoop:hadoop-aws:3.3.4",
        "spark.jars.repositories": "https://repo.example.invalid/maven2",
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2",
    }
    properties = mlenv("spark-conf", "--project", str(root), check=True).stdout
    assert "spark.pyspark.python ./environment/bin/python\n" in properties and "s3cr3t" not in properties
    submit = mlenv("spark-conf", "--format", "submit", "--project", str(root), check=True).stdout
    words = shlex.split(submit)
    assert words[0::2] == ["--conf"] * (len(words) // 2)
    assert "spark.executorEnv.MODEL_STAGE=from-the-lock" in words and "API_TOKEN" not in submit


def test_malformed_maven_coordinate(tmp_path: Path, channel: Path) -> None:
    root = project(tmp_path / "proj", channel, extra='[tool.mlenv.spark]\npackages = ["hadoop-aws-3.3.4"]\n')
    result = mlenv("spark-conf", "--project", str(root))
    assert_clean_error(result, 2, "tool.mlenv.spark.packages[0]", "malformed Maven coordinate")


JOB = """
import sys
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf
from hatch_mlenv.spark import configure

builder = SparkSession.builder.master("local-cluster[1,1,1024]").appName("mlenv-test")
spark = configure(builder, project=sys.argv[1]).getOrCreate()

@udf("string")
def probe(x):
    import os, sys
    return os.environ.get("MODEL_STAGE", "unset") + "|" + sys.prefix + "|" + os.environ.get("API_TOKEN", "no-secret")

print("RESULT " + spark.range(1).select(probe("id")).collect()[0][0])
spark.stop()
"""


def test_pyspark_job_runs_in_the_packed_environment(tmp_path: Path) -> None:
    """A real Spark (local-cluster: separate executor JVMs that unpack spark.archives), a UDF that
    reads a variable from the executor environment and reports the python it runs in."""
    from fixtures.host_python import host_python_minor, make_host_python_channel

    channel = make_host_python_channel(tmp_path / "channel")
    root = project(tmp_path / "proj", channel, python=host_python_minor(),
                   extra='[tool.mlenv.spark]\nconf = { "spark.ui.enabled" = false }\n')
    mlenv("lock", "--project", str(root), check=True)
    mlenv("install", "--project", str(root), check=True)
    mlenv("pack", "--project", str(root), check=True)
    job = tmp_path / "job.py"
    job.write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME")}
    process = subprocess.Popen([sys.executable, str(job), str(root)], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    stage, prefix, secret = line[len("RESULT "):].split("|")
    assert stage == "from-the-lock"  # spark.executorEnv.MODEL_STAGE reached the executor's python
    assert prefix.endswith("/environment") and str(root) not in prefix  # the unpacked archive, not the install
    assert secret == "no-secret"  # secrets are never put into Spark's configuration
