"""The cache on the PVC: everything that touches DEST.

`store.Cache` reads and saves the state, places finished files (journal, rename, directory
fsync), recovers after a crash and sweeps leftovers; `layout` owns every path under
`DEST/.fetcher/`, `keys` the rule of which object keys may become paths, `state` the state's
schema and atomic save, `partial` downloads in progress, `lease` one downloader per cache,
`oserrors` the mapping of OS errors (exit 5), `directio` O_DIRECT I/O.

Imports: errors, observe.log. Nothing here knows about S3.
"""
