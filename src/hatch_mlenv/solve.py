"""The conda solve: match specs in, pinned packages per platform out.

The built-in solver runs py-rattler in-process (no conda, mamba or micromamba
executable) and is registered through the same `mlenv_register_solvers` hook a
third-party solver would use.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from hatch_mlenv._compat import settle_rattler_at_exit
from hatch_mlenv.credentials import public, redact
from hatch_mlenv.errors import SolveError
from hatch_mlenv.hookspecs import SolveRequest, Solver, hookimpl  # the interface lives with the hooks
from hatch_mlenv.lockfile import LockedPackage, split_dependency

if TYPE_CHECKING:
    import rattler


class RattlerSolver:
    """Solve with py-rattler's resolvo solver over the channels' repodata."""

    name = "rattler"

    def solve(self, request: SolveRequest) -> dict[str, list[LockedPackage]]:
        import asyncio

        settle_rattler_at_exit()
        return asyncio.run(self._solve_all(request))

    async def _solve_all(self, request: SolveRequest) -> dict[str, list[LockedPackage]]:
        import asyncio

        import rattler

        from rattler.networking import Client

        # The standard client carries rattler's authentication storage (RATTLER_AUTH_FILE,
        # keyring, netrc); the gateway's own default client does not (py-rattler 0.28).
        gateway = rattler.Gateway(client=Client.default_client())
        channels = [rattler.Channel(url) for url in request.channels]
        specs = [rattler.MatchSpec(s, strict=False) for s in request.specs]
        results = await asyncio.gather(
            *(self._solve_one(gateway, channels, specs, plat, request) for plat in request.platforms)
        )
        return dict(zip(request.platforms, results))

    async def _solve_one(
        self,
        gateway: rattler.Gateway,
        channels: list[rattler.Channel],
        specs: list[rattler.MatchSpec],
        platform: str,
        request: SolveRequest,
    ) -> list[LockedPackage]:
        import rattler
        from rattler.exceptions import SolverError

        subdirs = [platform, "noarch"]
        virtual = [
            rattler.GenericVirtualPackage(
                rattler.PackageName(name), rattler.Version(version), rattler.BuildString(build)
            )
            for name, (version, build) in request.virtual_packages.get(platform, {}).items()
        ]
        locked = await self._preferred_records(gateway, channels, subdirs, platform, request.preferred)
        try:
            records = await rattler.solve(
                channels,
                specs,
                gateway=gateway,
                platforms=subdirs,
                virtual_packages=virtual,
                locked_packages=locked,
            )
        except SolverError as exc:
            raise SolveError(redact(f"cannot solve the environment for {platform}:\n{exc}", request.channels)) from None
        except Exception as exc:  # gateway errors: unreadable or missing repodata
            raise SolveError(redact(f"cannot read the channels for {platform}: {exc}", request.channels)) from None
        return [_locked(record, platform) for record in records]

    @staticmethod
    async def _preferred_records(
        gateway: rattler.Gateway,
        channels: list[rattler.Channel],
        subdirs: list[str],
        platform: str,
        preferred: tuple[LockedPackage, ...],
    ) -> list[rattler.RepoDataRecord]:
        wanted = {p.url: p for p in preferred if p.platform == platform and p.manager == "conda"}
        if not wanted:
            return []
        specs = sorted({f"{p.name}=={p.version}" for p in wanted.values()})
        found = await gateway.query(channels, subdirs, specs, recursive=False)
        return [record for batch in found for record in batch if public(str(record.url)) in wanted]


def _locked(record: rattler.RepoDataRecord, platform: str) -> LockedPackage:
    # py-rattler 0.28 has no `purls` attribute; the record's JSON carries them.
    purls = json.loads(record.to_json()).get("purls") or ()
    return LockedPackage(
        platform=platform,
        manager="conda",
        name=record.name.normalized,
        version=str(record.version),
        build=str(record.build),
        url=public(str(record.url)),  # the channel's credentials are for fetching, never for the lock
        md5=record.md5.hex() if record.md5 else None,
        sha256=record.sha256.hex() if record.sha256 else None,
        dependencies=dict(split_dependency(d) for d in record.depends),
        purls=tuple(purls),
    )


@hookimpl
def mlenv_register_solvers() -> list[Solver]:
    return [RattlerSolver()]
