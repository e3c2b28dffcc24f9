"""A labctl bench as a FINALES2 tenant (BIG-MAP's request/result exchange server).

`client` speaks FINALES2's REST API; `capability` reads what the bench answers from its
recipes' `"finales"` blocks and derives the tenant description; `formulation` maps FINALES
formulations onto recipe parameters; `stock` keeps what the bench can still promise;
`results` builds result documents in the FINALES2_schemas shapes; `journal` is the tenant's
crash-safe record; `tenant` is the loop. `labctl finales serve|tenant` is the CLI.
"""
