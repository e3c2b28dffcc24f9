"""Register maps of the Modbus drivers, shipped as package data (read with importlib.resources)."""
