"""``flopsweep-server``: a shared MLflow tracking server on PostgreSQL, its artifacts in a store of their own. It is
a tool beside flopsweep, not part of it: it imports nothing from flopsweep, and flopsweep reaches it as any MLflow
server (``tracking=server``).

    flopsweep-server start  [--dir DIR] [--port 5000] [--host 127.0.0.1] [--db-port 5433] [--artifacts URI]
                            [--workers 4] [--pg-bin DIR] [--pg-user NAME] [-- MLFLOW-SERVER-OPTIONS...]
    flopsweep-server status [--dir DIR]
    flopsweep-server stop   [--dir DIR]
    flopsweep-server run    [the options of start]    # start, stay in the foreground; Ctrl-C stops both

``start`` creates what DIR lacks, once: a PostgreSQL cluster in DIR/postgres (initdb; it listens on 127.0.0.1
only and asks for a password, which is kept in DIR/pgpass and reaches MLflow through ``PGPASSFILE``, never a
command line), and its ``mlflow`` database. It then starts PostgreSQL and ``mlflow server`` in the background and
returns once the server answers. Runs go to PostgreSQL; artifacts to DIR/artifacts, or to ``--artifacts`` (any
destination ``mlflow server --artifacts-destination`` takes: a mounted folder, s3://...), proxied by the server,
so that clients need access to the server only. Options given to ``start`` are remembered in DIR/server.json.
"""
