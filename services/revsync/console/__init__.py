"""The exception console: a web workbench over the order journey and the exceptions worklist."""
