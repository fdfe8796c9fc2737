"""`mlenv serve`: a read-only web page over a registry, local or OCI.

Pages: the environments; an environment's versions (newest first, paged); a version (its
definition, packages per platform, a dependency graph drawn on the server as SVG, downloads and
the commands that use it); a diff of two versions. Each page has a JSON twin under `/api/`
whose body is what the CLI's `--json` prints (`list`, `history`, `show`, `tree`, `why`,
`diff`): the page and the CLI call the same library functions.

It writes nothing (the registry is opened read-only, caches are read and never written), listens
on loopback unless told otherwise, escapes everything through Jinja's autoescaping, serves
no file but its own few assets, and loads nothing from the network: it works air-gapped.

- `app.py`: the Starlette application (`create_app`) and the server (`serve`, what
  `mlenv serve` runs): routes, errors, headers.
- `pages.py`: what each page shows, from the registry and the library.
- `picture.py`: the layout of the dependency graph.
- `templates/`, `static/`: Jinja templates, the stylesheet and the one script.

Nothing is imported here: `mlenv` imports `web.app` only when it serves.
"""
