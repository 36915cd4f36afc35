"""Weight precision of a device shard: quantized linears, their measured speed and quality cost.

Importable as ``coinfer.precision``; torch is imported only inside the modules that need it.
"""
