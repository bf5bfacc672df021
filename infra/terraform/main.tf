# Scheduled bulk reprocessing of imgsim on Dataflow: a bucket, an image repository, two service
# accounts and a Cloud Scheduler job that launches the Flex Template gs://BUCKET/templates/imgsim.json
# (built from infra/metadata.json by `gcloud dataflow flex-template build`, see infra/RUNBOOK.md).

locals {
  bucket_url    = "gs://${google_storage_bucket.imgsim.name}"
  output        = "${local.bucket_url}/${var.output_prefix}"
  template_path = "${local.bucket_url}/templates/imgsim.json"
  launch_uri    = "https://dataflow.googleapis.com/v1b3/projects/${var.project}/locations/${var.region}/flexTemplates:launch"

  # The same files serve `gcloud dataflow flex-template run --flags-file=...` (see the runbook).
  profile = jsondecode(file("${path.module}/../profiles/${var.worker_profile}.json"))
  # The profile's own template parameters (the int8 profile's backend and precision); the image goes
  # into the launch environment instead, and extra_parameters win over these.
  profile_parameters = { for name, value in lookup(local.profile, "--parameters", {}) : name => value if name != "sdk_container_image" }
  worker_image       = var.worker_profile == "gpu" ? var.gpu_image : var.image

  template_parameters = [for p in jsondecode(file("${path.module}/../metadata.json")).parameters : p.name]

  # FlexTemplateRuntimeEnvironment of the launch request (Dataflow REST API v1b3). Dataflow service
  # options such as worker_accelerator reach template jobs as additional experiments.
  environment = {
    serviceAccountEmail   = google_service_account.worker.email
    tempLocation          = "${local.bucket_url}/tmp"
    stagingLocation       = "${local.bucket_url}/staging"
    sdkContainerImage     = local.worker_image
    machineType           = local.profile["--worker-machine-type"]
    maxWorkers            = coalesce(var.max_workers, local.profile["--max-workers"])
    diskSizeGb            = var.disk_size_gb
    additionalExperiments = lookup(local.profile, "--additional-experiments", [])
  }
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "dataflow.googleapis.com",
    "iam.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}

resource "google_storage_bucket" "imgsim" {
  name                        = var.bucket_name
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # LATEST is replaced by compare-and-swap on its generation; old versions would only cost money.
  versioning {
    enabled = false
  }

  # Beam's temporary files and Dataflow's staging (job files, Flex Template launch records).
  lifecycle_rule {
    condition {
      age            = 7
      matches_prefix = ["tmp/", "staging/"]
    }
    action {
      type = "Delete"
    }
  }

  # Old runs (embeddings, failures, summary, index). The schedule publishes far more often than
  # run_retention_days, so the run LATEST points to is always much newer than this: if scheduled
  # runs stop publishing for that long, pause this rule (or raise the retention) before it reaches
  # the live index. `--keep-runs N` (extra_parameters.keep_runs) also prunes by count at publish
  # time; this rule is the backstop that also removes runs which never published. LATEST itself
  # (PREFIX/LATEST) is not under runs/ and is never deleted by a rule.
  lifecycle_rule {
    condition {
      age            = var.run_retention_days
      matches_prefix = ["${var.output_prefix}/runs/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository" "imgsim" {
  location      = var.region
  repository_id = var.repository_id
  format        = "DOCKER"
  description   = "imgsim Dataflow images: Flex Template launcher and SDK container (CPU and GPU)"

  depends_on = [google_project_service.apis]
}

# Runs the Flex Template launcher VM and the Dataflow workers.
resource "google_service_account" "worker" {
  account_id   = "imgsim-dataflow"
  display_name = "imgsim Dataflow launcher and workers"
}

resource "google_project_iam_member" "worker_dataflow" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = "serviceAccount:${google_service_account.worker.email}"
}

# Read input, write runs and LATEST, temp and staging files: this bucket only. Inputs in other
# buckets need roles/storage.objectViewer there.
resource "google_storage_bucket_iam_member" "worker_objects" {
  bucket = google_storage_bucket.imgsim.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_artifact_registry_repository_iam_member" "worker_images" {
  project    = google_artifact_registry_repository.imgsim.project
  location   = google_artifact_registry_repository.imgsim.location
  repository = google_artifact_registry_repository.imgsim.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.worker.email}"
}

# Launches the template on schedule, as the worker service account.
resource "google_service_account" "scheduler" {
  account_id   = "imgsim-scheduler"
  display_name = "imgsim Cloud Scheduler: launches the Dataflow Flex Template"
}

resource "google_project_iam_member" "scheduler_dataflow" {
  project = var.project
  role    = "roles/dataflow.developer"
  member  = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_service_account_iam_member" "scheduler_acts_as_worker" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.scheduler.email}"
}

# The launch request names the template spec; read access to templates/ only.
resource "google_storage_bucket_iam_member" "scheduler_reads_template" {
  bucket = google_storage_bucket.imgsim.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.scheduler.email}"

  condition {
    title      = "imgsim-templates-only"
    expression = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.imgsim.name}/objects/templates/\")"
  }
}

resource "google_cloud_scheduler_job" "reprocess" {
  name             = "imgsim-reprocess"
  description      = "Launch the imgsim Flex Template (${var.worker_profile} workers): embed ${var.input}, publish to ${local.output}"
  region           = var.region
  schedule         = var.schedule
  time_zone        = var.time_zone
  attempt_deadline = "320s"

  retry_config {
    retry_count          = 1
    min_backoff_duration = "300s"
  }

  http_target {
    http_method = "POST"
    uri         = local.launch_uri
    headers = {
      "Content-Type" = "application/json"
    }
    # No run_id: each launch gets a fresh UTC timestamp from the launcher.
    body = base64encode(templatefile("${path.module}/launch_body.json.tftpl", {
      job_name           = var.job_name
      template_path      = local.template_path
      input              = var.input
      output             = local.output
      extra_parameters   = var.extra_parameters
      profile_parameters = local.profile_parameters
      environment        = local.environment
    }))

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  lifecycle {
    precondition {
      condition     = var.worker_profile != "gpu" || var.gpu_image != ""
      error_message = "worker_profile \"gpu\" needs gpu_image (built from infra/Dockerfile.gpu)."
    }
    precondition {
      condition     = alltrue([for name in keys(var.extra_parameters) : contains(local.template_parameters, name) && !contains(["input", "output", "run_id"], name)])
      error_message = "extra_parameters: every name must be a parameter of infra/metadata.json other than input, output and run_id."
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.scheduler_dataflow,
    google_service_account_iam_member.scheduler_acts_as_worker,
    google_storage_bucket_iam_member.scheduler_reads_template,
  ]
}
