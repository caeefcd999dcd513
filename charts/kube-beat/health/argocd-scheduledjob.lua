-- Argo CD health check for kubebeat.io/ScheduledJob (argocd-cm key
-- resource.customizations.health.kubebeat.io_ScheduledJob; docs/gitops.md). Argo CD runs it with
-- gopher-lua (Lua 5.1) and the live object in `obj`; tests/alerts.rs runs it with lua5.1 against
-- objects kube-beat really wrote.
local hs = {}
local generation = obj.metadata.generation

-- kube-beat's Ready condition (it owns no other; other controllers' conditions are ignored).
local ready = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end

-- Before the first reconcile, or before kube-beat has seen the latest spec: what the condition
-- says is about an older generation (or nothing yet).
local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end
if ready ~= nil and ready.observedGeneration ~= nil then
  observed = ready.observedGeneration
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for kube-beat to reconcile the job"
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

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended: no new runs are scheduled"
  return hs
end

hs.status = "Healthy"
hs.message = ready.message or ""
return hs
