//! Process managers of the engine: the checkout saga and its compensations.
