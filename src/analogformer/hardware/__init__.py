"""The chip side: tile mapping and chip presets (`mapping`), attention MAC energy and area
(`energy`). Imports nothing from pruning and no plotting library (figures are in
`analogformer.report.figures`)."""
