"""The platform's own commands: the local Spark cluster, the JAR cache, SQL over the lakehouse, the SQL endpoint
for BI tools, and the one-off timestamp migration."""

from __future__ import annotations

from jobs.platform.arguments import with_spark


def cluster(settings, args):
    from jobs.platform import cluster

    if args.action == "start":
        return cluster.start(args.workers, args.cores, args.memory)
    if args.action == "stop":
        return cluster.stop()
    return {"running": cluster.pids()}


def jars(settings, args):
    from jobs.platform.spark import ensure_jars

    print(",".join(ensure_jars(settings, object_store=True if args.object_store else None)))
    return None


def log_store(settings, args):
    from jobs.platform import log_store

    return log_store.create_table(settings)


def sql(settings, args):
    from jobs.platform import lakehouse

    def go(spark):
        names = lakehouse.register_tables(spark, settings)
        if not args.query:
            print("\n".join(names))
            return None
        spark.sql(args.query).show(args.limit, truncate=False)
        return None

    return with_spark(settings, args.command, go)


def migrate_timestamps(settings, args):
    from jobs.platform import lakehouse

    return with_spark(settings, args.command, lambda s: {"migrated": lakehouse.migrate_wall_clock(s, settings)})


def sql_server(settings, args):
    from jobs.platform import sql_server

    host = args.host or settings.sql_server.host
    port = args.port or settings.sql_server.port
    if args.action == "serve":
        sql_server.serve(settings, host, port)
        return None
    if args.action == "start":
        return sql_server.start(settings, host, port, settings.sql_server.start_timeout_s)
    if args.action == "stop":
        return sql_server.stop(port)
    return sql_server.status(host, port)


def register(commands) -> None:
    p = commands.add_parser(
        "cluster",
        help="start/stop a local Spark standalone cluster (master + workers) from the installed pyspark",
        description="Starts spark://127.0.0.1:7077 with N workers as background processes (logs and pid files "
        "in .cache/cluster). Point jobs at it with TAXI__SPARK__MASTER=spark://127.0.0.1:7077.",
    )
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    p.add_argument("--cores", type=int, default=1, help="cores per worker (default 1)")
    p.add_argument("--memory", default="2g", help="memory per worker (default 2g)")
    p.set_defaults(func=cluster)

    p = commands.add_parser("jars", help="resolve the Delta/SynapseML JARs into the cache and print them (for --jars)")
    p.add_argument(
        "--object-store",
        action="store_true",
        help="add the S3 connector (spark.object_store_packages), as an s3a:// lakehouse does",
    )
    p.set_defaults(func=jars)

    p = commands.add_parser(
        "log-store",
        help="init: create the DynamoDB table through which drivers commit to an s3a:// lakehouse "
        "(writes.s3_log_store: dynamodb), if it is missing",
        description="Creates writes.dynamodb_table (hash key tablePath, range key fileName, on-demand capacity, "
        "expireTime as TTL) at writes.dynamodb_endpoint / AWS_ENDPOINT_URL in writes.dynamodb_region, and waits "
        "until it is active. Idempotent: a deployment's init step runs it every start.",
    )
    p.add_argument("action", choices=["init"])
    p.set_defaults(func=log_store)

    p = commands.add_parser("sql", help="register every lakehouse table as taxi.<name> and run a Spark SQL query")
    p.add_argument("query", nargs="?", help="SQL to run; without it, list the registered tables")
    p.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    p.set_defaults(func=sql)

    p = commands.add_parser(
        "migrate-timestamps",
        help="once, for a lakehouse written before trip times became wall-clock: rewrite every table's "
        "pickup/dropoff times from TIMESTAMP to TIMESTAMP_NTZ (same values; time travel keeps the old version)",
    )
    p.set_defaults(func=migrate_timestamps)

    p = commands.add_parser(
        "sql-server",
        help="the SQL endpoint for BI tools: Spark's Thrift server (HiveServer2, JDBC/ODBC) over taxi.<name> views",
        description="start: launch the server through spark-submit in the background (views of every lakehouse "
        "table as taxi.<name>, refreshed at each start) and wait until it listens; stop; status; serve: the server "
        "in the foreground (what start runs). Binds to sql_server.host (127.0.0.1); any other address needs "
        "sql_server.authentication LDAP or CUSTOM.",
    )
    p.add_argument("action", choices=["start", "stop", "status", "serve"])
    p.add_argument("--port", type=int, help="port (default: sql_server.port, 10000)")
    p.add_argument("--host", help="address to bind (default: sql_server.host, 127.0.0.1)")
    p.set_defaults(func=sql_server)
