"""The web dashboard (``audioset ui``): jobs, their files, results and search, over the job store and the results
bucket the CLI reads. A shell like ``producers``: the core knows nothing of it."""
