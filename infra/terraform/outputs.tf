output "template_path" {
  description = "Where `gcloud dataflow flex-template build` must write the template spec."
  value       = local.template_path
}

output "bucket" {
  value = google_storage_bucket.imgsim.name
}

output "output" {
  description = "imgsim's output root: runs/RUN_ID/ and LATEST live here."
  value       = local.output
}

output "repository" {
  description = "Push the images here."
  value       = "${google_artifact_registry_repository.imgsim.location}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.imgsim.repository_id}"
}

output "worker_service_account" {
  value = google_service_account.worker.email
}

output "scheduler_service_account" {
  value = google_service_account.scheduler.email
}

output "scheduler_job" {
  value = google_cloud_scheduler_job.reprocess.name
}

output "serve_url" {
  description = "The imgsim serve service (when serve_image is set)."
  value       = var.serve_image == "" ? null : google_cloud_run_v2_service.serve[0].uri
}
