"""The pimc instruction-set simulator.

It knows only the program format and instruction set defined in ``spec/``; it never imports the
compiler (``pimc``), so it checks the compiler rather than agreeing with it.
"""

__version__ = "0.1.0"
