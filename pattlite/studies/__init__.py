"""The studies of the paper: which experiments each table needs, and each table and figure, ours beside
the paper's. One module per concern:

- `context`: the `NotebookContext` (profile, datasets, folders) and the parsing of papermill parameters;
- `plan`: which experiments each study needs (`study_experiments`, `notebook_plan`), written once and
  used by the notebooks, the report and `pattlite grid`;
- `compute`: the CPU-time estimate and the warning when a real-data profile has no GPU/TPU;
- `notebook`: `notebook_context` (parameters -> context) and `run` (trains the missing experiments);
- `tables`: Tables 1-11 and the audit table from manifests and result frames;
- `figures`: Figures 2-10, the audit chart, sample images and learning curves;
- `summary`: the headline table (paper, published protocol, each image alone, no mixing, corrected);
- `gap`: the gap to the paper taken apart, step by step, with its figure;
- `cap`: what a stage-2 epoch cap costs, from the uncapped reference runs;
- `contrast`: what the authors' random contrast changes, from the contrast study's paired runs;
- `layout`: the reading order of the report's sections;
- `replication_report`: the report's sections and files; its prose lives in `pattlite/resources/report/`
  (`prose`);
- `publish`: `pattlite publish`: a finished run's report, tables, face-free figures and README block.

The names the notebooks use are importable from the package itself:

```python
from pattlite import studies

ctx = studies.notebook_context("demo")
experiments = studies.study_experiments(ctx, "table4")
studies.plan_frame(ctx, experiments)                 # the plan, before running it
results = studies.run(ctx, experiments)              # trains what is missing
studies.table4(results, synthetic=ctx.synthetic)
```
"""

from pattlite.studies.compute import paper_compute_estimate, warn_if_no_accelerator
from pattlite.studies.context import (
    BENCHMARKS,
    IN_THE_WILD,
    NotebookContext,
    benchmark_manifests,
    context_summary,
    in_the_wild,
    parse_bool,
    parse_list,
)
from pattlite.studies.figures import (
    FIGURES,
    audit_figure,
    confusion_figure,
    figure_caption,
    gradcam_figure,
    gradcam_samples,
    learning_curves_figure,
    load_results_files,
    paper_figure,
    sample_grid_figure,
    summed_confusion,
)
from pattlite.studies.notebook import notebook_context, run
from pattlite.studies.plan import (
    AUDIT_VARIANTS,
    MAIN_VARIANTS,
    STUDIES,
    SUBSET_DATASETS,
    SUBSETS,
    TABLE4_VARIANTS,
    TABLE5_DATASET,
    TABLE5_KERNELS,
    TABLE5_LAYERS,
    TABLE6_VARIANTS,
    all_experiments,
    audit_experiments,
    gradcam_experiment,
    main_experiments,
    notebook_plan,
    plan_frame,
    study_experiments,
    table4_experiments,
    table5_experiments,
    table6_experiments,
)
from pattlite.studies.replication_report import provenance_table, report_sections, verdict_summary, write_report
from pattlite.studies.tables import (
    OUR_ROWS,
    PROTOCOLS,
    TABLES,
    WHOLE_TEST,
    audit_findings,
    audit_table,
    data_tables,
    model_param_count,
    ours_accuracy,
    save,
    standard_rows,
    table,
    table4,
    table5,
    table6,
    table7,
    table8,
    table9,
    table10,
    table11,
)
