from django.urls import path

from . import views

urlpatterns = [
    path("login", views.login),
    path("profile", views.profile),
    path("transfer", views.transfer),
    path("account", views.AccountView.as_view()),
    path("admin/revoke", views.admin_revoke),
]
