"""Inert stand-ins for what a pickle names when loaded with weights_only=False."""


class Global:
    """A reference to a class or function by name. Never imported."""

    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module = module
        self.name = name

    def __repr__(self):
        return f"ckpt.Global({self.module}.{self.name})"

    def __eq__(self, other):
        return isinstance(other, Global) and (self.module, self.name) == (other.module, other.name)

    def __hash__(self):
        return hash((self.module, self.name))


class Object:
    """An instance of a class outside the allow-list, kept as the pickle built it.

    Nothing is imported or called: ``module`` and ``name`` name the class, ``how``
    the opcode that built it ("REDUCE", "NEWOBJ", ...), ``args`` / ``kwargs`` its
    constructor arguments, ``state`` what BUILD set (or None), ``list_items`` /
    ``dict_items`` what was appended or set on it.
    """

    __slots__ = ("module", "name", "how", "args", "kwargs", "state", "list_items", "dict_items")

    def __init__(self, module, name, how, args, kwargs=None, state=None, list_items=(), dict_items=()):
        self.module = module
        self.name = name
        self.how = how
        self.args = args
        self.kwargs = kwargs
        self.state = state
        self.list_items = list(list_items)
        self.dict_items = list(dict_items)

    @property
    def qualified_name(self):
        return f"{self.module}.{self.name}"

    def __repr__(self):
        return f"ckpt.Object({self.module}.{self.name}, how={self.how}, args={self.args!r}, state={self.state!r})"
