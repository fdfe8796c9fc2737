"""Staging an image's prefix: the linux-64 lock installed on this machine for the image's prefix
(`/opt/env`), as both builders put it into the image.

- Conda packages go through rattler's installer with the image's prefix as the target, pip
  packages are the locked wheels: `hatch_mlenv.install`, given values (the plan's `Staging`).
- Activation: when the installed prefix has activation scripts (`etc/conda/activate.d/*.sh`,
  `etc/conda/env_vars.d`), the image gets an entrypoint, `<prefix>/etc/hatch-mlenv/entrypoint.sh`,
  that runs conda's activation (the script rattler writes for the prefix) before exec'ing the
  command.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hatch_mlenv._version import __version__
from hatch_mlenv.errors import ImageError
from hatch_mlenv.image.plan import ENTRYPOINT, PLATFORM, ImagePlan, Staging, one_word
from hatch_mlenv.install.conda import install_conda
from hatch_mlenv.install.wheels import install_wheels
from hatch_mlenv.progress import step


def stage_prefix(staging: Staging, staged: Path, plan: ImagePlan) -> bool:
    """Install the linux-64 lock at `staged` for the image's prefix, with the activation
    wrapper when the prefix needs one; returns whether it did (both builders use this)."""
    with step(f"installing the {PLATFORM} lock of {plan.name} for the image's prefix {plan.prefix}"):
        install_conda(staging.lockfile, PLATFORM, staged, target_prefix=plan.prefix, channels=staging.channels)
        if staging.wheels:
            if staging.python is None:
                raise ImageError(f"{staging.lockfile}: pip packages are locked for {PLATFORM} but python is not")
            install_wheels(list(staging.wheels), staged, staging.python, target_prefix=plan.prefix,
                           indexes=staging.indexes, find_links=staging.find_links,
                           build_constraints=staging.build_constraints)
        # rattler marks its own cache directories; this one is an image's prefix.
        (staged / "CACHEDIR.TAG").unlink(missing_ok=True)
    wrapper = entrypoint_script(staged, plan)
    if wrapper is None:
        return False
    path = staged / ENTRYPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(wrapper, encoding="utf-8")
    path.chmod(0o755)
    return True


def entrypoint_script(staged: Path, plan: ImagePlan) -> str | None:
    """The image's activation wrapper, or None when the prefix installed at `staged` has nothing to activate.

    The packages' scripts compute their variables from the running container (its
    CONDA_PREFIX, its PATH, what they find on disk there), so they cannot be run on
    this host to become ENV lines, nor by a RUN step, whose environment no later
    step inherits: they run at container start, as `conda activate` would run them.
    """
    from rattler.shell import (  # lazy: rattler takes ~0.12 s to import; `mlenv image tag` needs none of it
        ActivationVariables,
        PathModificationBehavior,
        Shell,
        activate,
    )

    conda = staged / "etc" / "conda"
    if not (any(conda.glob("activate.d/*.sh")) or any(conda.glob("env_vars.d/*.json"))):
        return None
    bin_dir, staged = f"{plan.prefix}/bin", staged.absolute()
    script = activate(
        staged, ActivationVariables(None, [bin_dir], PathModificationBehavior.Replace), Shell.bash, PLATFORM
    ).script
    # rattler writes the script for where the prefix is now; the image has it at plan.prefix.
    # Its PATH line would drop the image's PATH: ENV already puts the prefix's bin first.
    lines = [line.replace(str(staged), plan.prefix) for line in script.splitlines()
             if line.strip() and not line.startswith("export PATH=")]
    spec_values = [f"export {_shell_name(name)}={shlex.quote(value)}" for name, value in sorted(plan.variables.items())]
    quoted_bin = shlex.quote(bin_dir)
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Written by hatch-mlenv {__version__} for {one_word(plan.name, 'name')} sha256:{plan.digest}: the image's "
            "entrypoint.",
            f"# conda's activation of {one_word(plan.prefix, 'prefix')} (as rattler writes it), then the command. The "
            "scripts' own",
            "# output goes to stderr, so a command's stdout is only the command's.",
            "{",
            *(f"    {line}" for line in lines),
            "} >&2",
            "# the lock's values have the last word, and the prefix's bin stays first, as for `mlenv run`",
            *spec_values,
            "_mlenv_rest=; set -f; _mlenv_ifs=$IFS; IFS=:",
            "for _mlenv_entry in $PATH; do",
            f'    [ "$_mlenv_entry" = {quoted_bin} ] || _mlenv_rest="$_mlenv_rest:$_mlenv_entry"',
            "done",
            "IFS=$_mlenv_ifs; set +f",
            f'export PATH={quoted_bin}"$_mlenv_rest"',
            "unset _mlenv_rest _mlenv_ifs _mlenv_entry",
            'exec "$@"',
            "",
        ]
    )


def _shell_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ImageError(f"{name!r} is not an environment variable name a shell can export")
    return name
