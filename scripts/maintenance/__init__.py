"""Keeping the house: generated pages, the import graph, builds and upgrades.

make_reference     docs/reference/ from the code that declares what each page lists
imports            the import graph of localrun/ and scripts/, its cycles, its longest parts
build_binary       localrun as one executable file (dist/localrun)
build_ui           the chat page's vendored libraries, from ui/ (npm)
upgrade_llama_cpp  the exact runtime's patches moved to another llama-cpp-python release
"""
