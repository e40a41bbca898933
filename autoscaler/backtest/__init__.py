"""Policy backtest: replay traffic against scaling policies on a simulated Grove cluster.

Modules: `traces` (trace and rate-shape loaders), `cluster` (topology and replica lifecycle),
`serving_events` and `serving_fluid` (serving models from a Dynamo profile), `signals`
(Prometheus-style signals), `baselines`, `oracle`, `runner`, `report`, `history` (replay of
signals recorded in Prometheus) and `cli` (the `backtest` subcommand).
"""
