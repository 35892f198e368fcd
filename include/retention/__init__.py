"""Retention as policy: what each store keeps, and for how long (`policy`, from the Variable
`retention`), applied by the retention DAG (`prune`, `tasks`): rows past the horizon are deleted
from Postgres `binance` (the deletes reach Cassandra through the stream) and from the bridge, and
Cassandra's own window is published for the stream, which writes every row with a TTL that ends
when the row leaves it."""
