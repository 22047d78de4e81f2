//! Fixed-size cells: the unit every link carries (docs/spec.md, "Cells").
