-- Argo CD health check for kubebeat.io/TaskFunction (argocd-cm key
-- resource.customizations.health.kubebeat.io_TaskFunction; docs/gitops.md). Same rules as the
-- ScheduledJob's, without suspension: Degraded when Ready=False, Progressing before kube-beat has
-- reconciled the current generation.
local hs = {}
local generation = obj.metadata.generation

local ready = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end

local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end
if ready ~= nil and ready.observedGeneration ~= nil then
  observed = ready.observedGeneration
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for kube-beat to reconcile the task function"
  return hs
end
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for kube-beat to reconcile generation " .. generation
  return hs
end

if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason or "Ready=False"
  return hs
end
if ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = ready.message or "Ready is not yet known"
  return hs
end

hs.status = "Healthy"
hs.message = ready.message or ""
return hs
