"""Host-side drivers, one module per instrument protocol. Depend on labctl only."""
