"""The definition of an environment, `[tool.mlenv]`, in rooms of one job each:

- `_model`: the typed `Spec` and its parts, its hash and its self-contained definition;
- `_read`: reading and validating `[tool.mlenv]` (`load_spec`, `parse_spec`);
- `_keys`: typed getters whose errors name the file and the key path;
- `_sections`: the sub-tables (variables, system requirements, virtual packages, docker, spark, ...);
- `_packages`: conda match specs, `python` and PEP 508 requirements, checked cheaply;
- `_channels`: channels, package indexes and find-links, credentials only as `${VAR}` references;
- `_extends`: `extends` (curated environments, other files) and named environments;
- `_checks`: the grammars of names and of values that become Dockerfile words, paths and URLs.

Its public face is `hatch_mlenv.spec`; the host's side (platforms, virtual packages) is
`hatch_mlenv.platforms`.
"""
