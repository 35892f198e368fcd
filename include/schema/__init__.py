"""The schemas as versioned files: Postgres (`postgres`, sql/<schema>/) and Cassandra (`cassandra`,
cql/binance_cdc/), both named and checksummed the same way (`versions`)."""
