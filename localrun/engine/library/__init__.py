"""The llama.cpp library of this process: imported after the C++ runtime, what it was built with,
the parameters every model loads with here, a new backend checked, and its quantizer.
"""
