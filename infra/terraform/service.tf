# imgsim serve on Cloud Run, beside the scheduled pipeline that feeds it: it follows
# gs://BUCKET/PREFIX/LATEST every serve_refresh_seconds and swaps each new run in without a
# restart (image: infra/Dockerfile.serve). Created when serve_image is set.

resource "google_service_account" "server" {
  count        = var.serve_image == "" ? 0 : 1
  account_id   = "imgsim-serve"
  display_name = "imgsim serve (Cloud Run): reads the published index"
}

# Read-only, and only the output root: LATEST and the runs' index artifacts.
resource "google_storage_bucket_iam_member" "server_reads_output" {
  count  = var.serve_image == "" ? 0 : 1
  bucket = google_storage_bucket.imgsim.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.server[0].email}"

  condition {
    title      = "imgsim-output-only"
    expression = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.imgsim.name}/objects/${var.output_prefix}/\")"
  }
}

resource "google_cloud_run_v2_service" "serve" {
  count    = var.serve_image == "" ? 0 : 1
  name     = "imgsim-serve"
  location = var.region
  ingress  = "INGRESS_TRAFFIC_ALL"

  template {
    service_account = google_service_account.server[0].email
    scaling {
      min_instance_count = var.serve_min_instances
      max_instance_count = var.serve_max_instances
    }
    containers {
      image = var.serve_image
      env {
        name  = "IMGSIM_INDEX"
        value = local.output
      }
      env {
        name  = "IMGSIM_REFRESH_SECONDS"
        value = tostring(var.serve_refresh_seconds)
      }
      resources {
        limits = {
          cpu    = var.serve_cpu
          memory = var.serve_memory
        }
        cpu_idle = false # the LATEST refresh runs between requests
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
        initial_delay_seconds = 10
        period_seconds        = 10
        failure_threshold     = 30
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds = 30
      }
    }
  }

  depends_on = [google_project_service.apis, google_storage_bucket_iam_member.server_reads_output]
}

# Anyone may call it when serve_public: a museum's site or shop asks it from the browser.
resource "google_cloud_run_v2_service_iam_member" "serve_public" {
  count    = var.serve_image != "" && var.serve_public ? 1 : 0
  name     = google_cloud_run_v2_service.serve[0].name
  location = google_cloud_run_v2_service.serve[0].location
  role     = "roles/run.invoker"
  member   = "allUsers"
}
